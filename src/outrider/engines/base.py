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
class CacheShapeInfo:
    """An info-style gauge (value 1) whose labels give the KV cache's block size, in tokens, and block count."""

    family: str
    block_size_label: str
    num_blocks_label: str
    # True when every replica's series carries the block count of the whole pod rather than its own (vLLM's front
    # end sums its engines' blocks into one cache config and labels every engine's series with it): not summed.
    count_is_pod_total: bool = False


@dataclasses.dataclass(frozen=True)
class CacheShapeGauges:
    """Two plain gauges whose values are the KV cache's block size, in tokens, and block count."""

    block_size: str
    num_blocks: str


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    metric_sources: Mapping[str, tuple[str, ...]]
    lora: LoraApi
    # What the routing protocol (GIE / llm-d, the `gie` metrics profile) needs beyond `metric_sources`:
    # where the page tells the KV cache's shape (newest spelling first), the engine's own LoRA state family
    # (vLLM's `vllm:lora_requests_info`; None: the engine has none, so outrider builds it from its adapter state),
    # and a gauge of how many adapters fit in one batch (the protocol's `max_lora`), when the engine has one.
    cache_shape: tuple[CacheShapeInfo | CacheShapeGauges, ...] = ()
    lora_info: str | None = None
    lora_slots: str | None = None
