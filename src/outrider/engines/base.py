"""What the rest of outrider needs to know about an inference engine.

An engine module exports one `EngineSpec`: its metric table and its runtime LoRA admin API. Adding an engine means
adding one module and listing its spec in `engines/__init__.py`.

The metric table maps each unified *concept* (a name like `kv_cache_usage_perc`, defined in
`outrider.metrics.concepts`) to the engine's own metric family names, newest spelling first: the standardizer
takes the first one the engine actually exposes, so a version that serves both an old and a new name contributes
only the new one. Family names are as they appear on the page in the Prometheus text format: counters keep their
`_total`, histograms are named without `_bucket`/`_sum`/`_count`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping

from outrider.engines.client import EngineClient


class LoraApi(abc.ABC):
    """How one engine loads and unloads LoRA adapters at run time.

    Contract: `load` and `unload` return only when the engine said yes. Otherwise they raise
    `outrider.errors.EngineRefused` carrying the engine's status and message and one of its `reason`s
    (`already_loaded`, `unknown_adapter`, `lora_disabled`, `rejected`), or `EngineUnavailable` when the engine
    could not be reached. Which adapters are loaded is read from `/v1/models`, the same for every engine
    (`EngineClient.list_adapters`).
    """

    @abc.abstractmethod
    async def load(self, engine: EngineClient, name: str, path: str) -> None:
        """Load the adapter at `path` (a directory the engine can read) under `name`."""

    @abc.abstractmethod
    async def unload(self, engine: EngineClient, name: str) -> None:
        """Unload the adapter called `name`."""


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    metric_sources: Mapping[str, tuple[str, ...]]
    lora: LoraApi
