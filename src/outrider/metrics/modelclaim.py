"""AIBrix's `aibrix:modelclaim_*` families, which its ModelClaim Grafana dashboard queries from the sidecar, built
from the engine lifecycle's state at each render (served under `--metrics-profile aibrix`).

The families and labels are AIBrix 0.8's: engines by phase (AIBrix's four phases), models resident (an engine
process exists: launching, booting, active, sleeping or stopping), each resident model's kvcached KV bytes (used
includes preallocated; 0 without a segment, as AIBrix reports it), its GPU-memory peak (0: outrider does not read
NVML, the value AIBrix itself reports when NVML cannot attribute memory) and the outcomes of adopting engines after
a restart. With the lifecycle off every family is there with zeros, as on an AIBrix runtime that launched nothing.

Reading a kvcached segment is a 24-byte read from /dev/shm (memory, never a network volume), done at most once per
composed page (metrics/page.py caches it for 0.1 s), for a handful of engines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outrider.lifecycle import kvcache

if TYPE_CHECKING:
    from outrider.lifecycle.supervisor import Supervisor

# AIBrix's phases for aibrix:modelclaim_engine_state; outrider never restarts an engine, so `restarting` stays 0.
PHASES = ("active", "sleeping", "restarting", "failed")
# Phases in which an engine process exists.
RESIDENT = ("launching", "booting", "active", "sleeping", "stopping")
# AIBrix's closed set of re-adoption results (outrider's supervisor counts them as it adopts records).
ADOPTION_RESULTS = ("success", "restart_scheduled", "terminal", "stopping", "removed", "invalid", "duplicate")


class ModelClaimCollector(Collector):
    def __init__(self, engines: Callable[[], Supervisor | None]) -> None:
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        supervisor = self._engines()
        records = supervisor.records() if supervisor is not None else []
        resident = [r for r in records if r.phase in RESIDENT]

        count = GaugeMetricFamily(
            "aibrix:modelclaim_models_resident", "Number of models resident (engine processes) on this pod."
        )
        count.add_metric([], float(len(resident)))
        yield count

        used = GaugeMetricFamily(
            "aibrix:modelclaim_kv_used_bytes",
            "kvcached KV bytes in use by a resident model (0 when its segment is absent).",
            labels=["model"],
        )
        total = GaugeMetricFamily(
            "aibrix:modelclaim_kv_total_bytes",
            "kvcached KV pool total bytes visible to a resident model.",
            labels=["model"],
        )
        hbm = GaugeMetricFamily(
            "aibrix:modelclaim_hbm_peak_bytes",
            "Largest GPU-memory footprint of a resident engine (0: outrider does not observe GPU memory).",
            labels=["model"],
        )
        for r in resident:
            assert supervisor is not None
            segment = kvcache.read_segment(supervisor.settings.shm_dir, r.ipc_name, kvcache.claim_of(r.ipc_claim))
            seg_total, seg_used, prealloc = segment if segment is not None else (0, 0, 0)
            used.add_metric([r.model_name], float(seg_used + prealloc))
            total.add_metric([r.model_name], float(seg_total))
            hbm.add_metric([r.model_name], 0.0)
        yield used
        yield total
        yield hbm

        state = GaugeMetricFamily(
            "aibrix:modelclaim_engine_state", "Number of runtime engines in each phase.", labels=["phase"]
        )
        for phase in PHASES:
            state.add_metric([phase], float(sum(r.phase == phase for r in records)))
        yield state

        adoptions = CounterMetricFamily(
            "aibrix:modelclaim_engine_re_adoptions_total",
            "Outcomes of taking engines over after a sidecar restart, from a fixed result set.",
            labels=["result"],
        )
        outcomes = supervisor.adoptions if supervisor is not None else {}
        for result in ADOPTION_RESULTS:
            adoptions.add_metric([result], float(outcomes.get(result, 0)))
        yield adoptions
