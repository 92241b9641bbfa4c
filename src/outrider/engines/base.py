"""What the rest of outrider needs to know about an inference engine.

An engine module exports one `EngineSpec`. The metric table maps each unified *concept* (a name like
`kv_cache_usage_perc`, defined in `outrider.metrics.concepts`) to the engine's own metric family names, newest
spelling first: the standardizer takes the first one the engine actually exposes, so a version that serves both an
old and a new name contributes only the new one. Family names are as they appear on the page in the Prometheus text
format: counters keep their `_total`, histograms are named without `_bucket`/`_sum`/`_count`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    metric_sources: Mapping[str, tuple[str, ...]]
