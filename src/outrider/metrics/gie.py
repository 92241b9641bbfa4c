"""The `gie` profile: the model-server protocol that the Gateway API Inference Extension's endpoint picker (now
llm-d's router) reads, served in vLLM's spelling for every engine.

Protocol documents followed: GIE `docs/proposals/003-model-server-protocol` and llm-d router
`docs/plugin-metric-protocol.md`, as of 2026-12. The picker parses the page with Prometheus's Go text parser, which
rejects a page on which a family appears twice, and then reads ONE series per metric: the first whose labels match
(nothing is summed), or for `vllm:lora_requests_info` the one with the largest value. It reads only gauge and counter
families. So each protocol family is served exactly once, as a gauge with exactly one series, whose value is the
combined value of the engine:

- `vllm:num_requests_waiting`, `vllm:num_requests_running`: the sum over the engine's replicas (vLLM's `engine`,
  SGLang's `dp_rank`, any `priority` split);
- `vllm:kv_cache_usage_perc`: the mean over replicas (each replica has its own pool, of the same size, so the mean
  is the fraction of the pod's KV cache in use);
- `vllm:cache_config_info{block_size, num_gpu_blocks}`: the block size, and the pod's blocks: vLLM's own figure
  (its front end labels every engine's series with the blocks of all engines), SGLang's replicas summed; a count
  the engine does not know yet (vLLM's "None" before profiling) is served as the engine wrote it;
- `vllm:lora_requests_info`: see `_lora_series` (vLLM) and `AdapterLoraInfo` (engines without it: SGLang).

Series that differ only in a rank inside one replica (`REPLICA_RANKS`) describe the same scheduler and count once,
by their largest value. The combined series keeps the labels that all its inputs share. Values no engine means
(1e308 twice, +Inf beside -Inf) still combine, to +Inf or NaN as float arithmetic has it: a hostile page is
served, never dropped.

vLLM's families already carry the protocol's names. A family with one series passes through byte for byte; a family
with several is replaced where it stands by the one combined series, so the family is never duplicated. The
per-replica values stay on the page under the unified `outrider:*` names, which are made from the page as the engine
served it. SGLang's own families are left as they are; the vLLM-spelled families are added after the page.

All of this runs once per scrape, over the lines of a few families; only `AdapterLoraInfo` runs when a page is
served, and it formats one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

from outrider.engines.base import CacheShapeGauges, CacheShapeInfo, EngineSpec

QUEUED = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
CACHE_CONFIG = "vllm:cache_config_info"
LORA_INFO = "vllm:lora_requests_info"
PROTOCOL_FAMILIES = (QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO)
BLOCK_SIZE, NUM_BLOCKS = "block_size", "num_gpu_blocks"
MAX_LORA, RUNNING_ADAPTERS, WAITING_ADAPTERS = "max_lora", "running_lora_adapters", "waiting_lora_adapters"

# Labels that tell ranks of one replica apart (tensor, pipeline and expert parallel): their series report the same
# requests and the same KV pool (SGLang with --enable-metrics-for-all-schedulers serves one per rank).
REPLICA_RANKS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})
# vLLM stamps the series of its current adapter set each time it records stats (each step while it is busy), and
# the empty set once more as a request ends: a few milliseconds after its last step (3.6 ms on the vllm-0.32.0
# fixture page, 4-6 ms live). An engine on a busy CPU answers /metrics mostly between requests, so its newest series
# is then nearly always the empty set while an adapter serves traffic. Under data parallelism the family has no
# engine label either, so no series says whose it is. The series stamped within this many seconds of the newest one
# are therefore joined: the engines' current sets, plus sets that ended within the window, whose adapters vLLM
# still holds in its GPU slots (an LRU cache), i.e. "loaded in GPU memory and ready", as the protocol defines
# running adapters. An engine that went idle a while ago stamped an empty set last, which adds nothing.
LORA_WINDOW = 1.0

Combine = Literal["sum", "mean"]


@dataclasses.dataclass(frozen=True)
class _Gauge:
    name: str  # the protocol family, in vLLM's spelling
    concept: str  # where the engine's spec names its sources (EngineSpec.metric_sources)
    combine: Combine
    help: str


GAUGES = (
    _Gauge(QUEUED, "num_requests_waiting", "sum", "Requests waiting in the engine's queue (TotalQueuedRequests)."),
    _Gauge(RUNNING, "num_requests_running", "sum", "Requests the engine is running (TotalRunningRequests)."),
    _Gauge(KV_USAGE, "kv_cache_usage_perc", "mean", "Fraction of the KV cache in use, 0 to 1 (KVCacheUtilization)."),
)
_HOW = {"sum": "summed over the engine's replicas", "mean": "the mean over the engine's replicas"}


@dataclasses.dataclass(frozen=True)
class Sample:
    index: int  # line number on the page
    line: str
    labels: Mapping[str, str]
    value: float


@dataclasses.dataclass(frozen=True)
class ProtocolPage:
    head: str  # the engine page, with any multi-series protocol family combined in place
    tail: str  # protocol families the page lacks, derived from the engine's own
    max_lora: int | None  # the engine's adapters per batch, when its page tells (SGLang's LoRA pool gauge)


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_CLOSE = re.compile(r"\s*\}")
_ESCAPED = re.compile(r"\\(.)")


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


def parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """(name, labels, value) of a text-format sample line, or None when it is not one."""
    brace, space = line.find("{"), line.find(" ")
    labels: dict[str, str] = {}
    if brace != -1 and (space == -1 or brace < space):
        name, pos = line[:brace], brace + 1
        while (match := _LABEL.match(line, pos)) is not None:
            labels[match.group(1)] = _ESCAPED.sub(_unescape, match.group(2))
            pos = match.end()
        close = _CLOSE.match(line, pos)
        if close is None:
            return None
        rest = line[close.end() :]
    elif space > 0:
        name, rest = line[:space], line[space:]
    else:
        return None
    fields = rest.split()
    if not name or not fields:
        return None
    try:
        return name, labels, float(fields[0])
    except ValueError:
        return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def series_line(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {format_value(value)}"


def _family(name: str, help_text: str, line: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{line}\n"


def _larger(a: float, b: float) -> float:
    return a if math.isnan(a) or a >= b else b  # a NaN on either side stays NaN


def _replica(sample: Sample, ignore: frozenset[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in sample.labels.items() if k not in REPLICA_RANKS and k not in ignore))


def per_replica(samples: Iterable[Sample], value: Callable[[Sample], float], ignore: frozenset[str]) -> list[float]:
    """One value per replica: series equal but for REPLICA_RANKS (and `ignore`) count once, by their largest."""
    groups: dict[tuple[tuple[str, str], ...], float] = {}
    for s in samples:
        key = _replica(s, ignore)
        seen = groups.get(key)
        groups[key] = value(s) if seen is None else _larger(seen, value(s))
    return list(groups.values())


def total(values: Sequence[float]) -> float:
    """The sum, exact where floats allow; +-Inf or NaN (never an exception) where the engine's values overflow."""
    try:
        return math.fsum(values)
    except OverflowError:  # finite values whose partial sums leave the float range (1e308 twice)
        return sum(values)
    except ValueError:  # +Inf and -Inf together
        return math.nan


def common_labels(samples: Sequence[Sample], ignore: frozenset[str] = frozenset()) -> dict[str, str]:
    """The labels every sample carries with the same value, in the first sample's order."""
    first = samples[0].labels
    return {k: v for k, v in first.items() if k not in ignore and all(s.labels.get(k) == v for s in samples[1:])}


def _combined(values: Sequence[float], how: Combine) -> float:
    summed = total(values)
    return summed if how == "sum" else summed / len(values)


def _whole(value: float) -> int | None:
    return int(value) if math.isfinite(value) and value.is_integer() and value >= 0 else None


def _whole_label(sample: Sample, label: str) -> int | None:
    try:
        return _whole(float(sample.labels[label]))
    except (KeyError, ValueError):
        return None


class _Page:
    """The lines of one page, and where the families we care about stand on it."""

    def __init__(self, page: str, wanted: frozenset[str]) -> None:
        self.lines = page.split("\n")  # only "\n" ends a line: label values may hold other line breaks
        self.present: set[str] = set()  # families with a HELP, TYPE or sample line here
        self._types: dict[str, str] = {}
        self._at: dict[str, list[int]] = {}
        for i, line in enumerate(self.lines):
            if not line:
                continue
            if line[0] == "#":
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("TYPE", "HELP") and parts[2] in wanted:
                    self.present.add(parts[2])
                    if parts[1] == "TYPE" and len(parts) == 4:
                        self._types[parts[2]] = parts[3].strip()
                continue
            brace, space = line.find("{"), line.find(" ")
            end = brace if brace != -1 and (space == -1 or brace < space) else space
            if end > 0 and line[:end] in wanted:
                self.present.add(line[:end])
                self._at.setdefault(line[:end], []).append(i)

    def samples(self, family: str) -> list[Sample]:
        """The family's series; none when it is declared as anything but a gauge (its values mean something else)."""
        if self._types.get(family, "gauge") != "gauge":
            return []
        out = []
        for i in self._at.get(family, ()):
            parsed = parse_sample(self.lines[i])
            if parsed is not None and parsed[0] == family:
                out.append(Sample(i, self.lines[i], parsed[1], parsed[2]))
        return out

    def first(self, families: Iterable[str]) -> tuple[str, list[Sample]] | None:
        for family in families:
            samples = self.samples(family)
            if samples:
                return family, samples
        return None


class ProtocolRewrite:
    """The protocol's families for one engine, made from each scraped page (see the module docstring)."""

    def __init__(
        self,
        metric_sources: Mapping[str, tuple[str, ...]],
        cache_shape: Sequence[CacheShapeInfo | CacheShapeGauges] = (),
        lora_info: str | None = None,
        lora_slots: str | None = None,
    ) -> None:
        self._gauges = tuple((g, metric_sources.get(g.concept, ())) for g in GAUGES)
        self._cache_shape = tuple(cache_shape)
        self._lora_info = lora_info
        self._lora_slots = lora_slots
        wanted = set(PROTOCOL_FAMILIES)
        for _, sources in self._gauges:
            wanted.update(sources)
        for shape in self._cache_shape:
            wanted.update(
                (shape.family,) if isinstance(shape, CacheShapeInfo) else (shape.block_size, shape.num_blocks)
            )
        wanted.update(n for n in (lora_info, lora_slots) if n)
        self._wanted = frozenset(wanted)

    @classmethod
    def for_engine(cls, spec: EngineSpec) -> ProtocolRewrite:
        return cls(spec.metric_sources, spec.cache_shape, spec.lora_info, spec.lora_slots)

    def apply(self, page: str) -> ProtocolPage:
        view = _Page(page, self._wanted)
        edits: dict[int, str | None] = {}  # line number -> its replacement; None drops the line
        tail: list[str] = []

        def serve(protocol: str, source: str, samples: list[Sample], line: str, help_text: str) -> None:
            if source == protocol:
                if len(samples) > 1:  # one series already is the engine's own line, left as it is
                    edits[samples[0].index] = line
                    edits.update((s.index, None) for s in samples[1:])
            elif protocol not in view.present:  # never a second family of that name
                tail.append(_family(protocol, help_text, line))

        for gauge, sources in self._gauges:
            found = view.first(sources)
            if found is None:
                continue
            source, samples = found
            values = per_replica(samples, lambda s: s.value, frozenset())
            line = series_line(gauge.name, common_labels(samples), _combined(values, gauge.combine))
            help_text = f"{gauge.help} Served by outrider from {source}, {_HOW[gauge.combine]}."
            serve(gauge.name, source, samples, line, help_text)

        cache = self._cache_series(view)
        if cache is not None:
            source, samples, line = cache
            help_text = f"KV cache block size (tokens) and blocks of all replicas. Served by outrider from {source}."
            serve(CACHE_CONFIG, source, samples, line, help_text)

        if self._lora_info is not None:
            samples = view.samples(self._lora_info)
            if samples:
                help_text = (
                    f"LoRA adapters running and waiting, and max_lora. Served by outrider from {self._lora_info}"
                )
                serve(LORA_INFO, self._lora_info, samples, _lora_series(samples), help_text)

        max_lora = None
        if self._lora_slots is not None:
            slots = view.samples(self._lora_slots)
            if slots:
                max_lora = _whole(max(s.value for s in slots))

        return ProtocolPage(_edited(page, view.lines, edits), "".join(tail), max_lora)

    def _cache_series(self, view: _Page) -> tuple[str, list[Sample], str] | None:
        """(source family, its samples, the combined series) from the first shape source the page carries."""
        for shape in self._cache_shape:
            if isinstance(shape, CacheShapeInfo):
                samples = view.samples(shape.family)
                line = _cache_from_info(shape, samples) if samples else None
                if line is not None:
                    return shape.family, samples, line
                continue
            sizes, blocks = view.samples(shape.block_size), view.samples(shape.num_blocks)
            if not sizes or not blocks:
                continue
            size = _whole(sizes[0].value)
            count = _whole(total(per_replica(blocks, lambda s: s.value, frozenset())))
            if size is None or count is None:
                continue
            labels = {**common_labels(sizes + blocks), BLOCK_SIZE: str(size), NUM_BLOCKS: str(count)}
            return shape.num_blocks, blocks, series_line(CACHE_CONFIG, labels, 1.0)
        return None


def _cache_from_info(shape: CacheShapeInfo, samples: list[Sample]) -> str | None:
    """The cache shape series from an info-style family.

    For the engine's own family (vLLM's) there is always one: a label that is no whole number is served as the
    engine wrote it (the first series'), since several series would break the picker. A family of another name is
    only translated when both labels are whole numbers (None otherwise: the picker reads the absence as unknown).
    """
    size_label, count_label = shape.block_size_label, shape.num_blocks_label
    own = shape.family == CACHE_CONFIG
    size = _whole_label(samples[0], size_label)
    counts = [(s, _whole_label(s, count_label)) for s in samples]
    known = [c for _, c in counts if c is not None]
    ignore = frozenset({size_label, count_label})
    count: int | None
    if shape.count_is_pod_total:  # every series carries the pod's figure: one of them, not their sum
        count = max(known) if known else None
    elif len(known) == len(counts):  # per replica: ints, whose sum never overflows
        replicas: dict[tuple[tuple[str, str], ...], int] = {}
        for s, c in counts:
            key = _replica(s, ignore)
            replicas[key] = max(replicas.get(key, 0), c or 0)
        count = sum(replicas.values())
    else:
        count = None
    if not own and (size is None or count is None):
        return None
    shared = common_labels(samples, ignore)
    if own:  # vLLM's own: its label order kept, both numbers where they stand
        served = {
            size_label: samples[0].labels.get(size_label, "") if size is None else str(size),
            count_label: samples[0].labels.get(count_label, "") if count is None else str(count),
        }
        labels = {k: served.get(k, v) for k, v in samples[0].labels.items() if k in shared or k in ignore}
    else:
        labels = {**shared, BLOCK_SIZE: str(size), NUM_BLOCKS: str(count)}
    return series_line(CACHE_CONFIG, labels, 1.0)


def _lora_series(samples: Sequence[Sample]) -> str:
    """vLLM's LoRA state as one series.

    vLLM keeps a series for every label set it ever stamped, each valued with the time it was last stamped. The
    adapter lists of every series stamped within LORA_WINDOW of the newest are joined, under the newest's max_lora
    and time; when the newest is alone in that window, it is served exactly as vLLM wrote it.
    """
    newest = max(samples, key=lambda s: s.value)  # the first of equals
    recent = sorted((s for s in samples if s.value >= newest.value - LORA_WINDOW), key=lambda s: -s.value)
    if len(recent) == 1:
        return newest.line
    labels = dict(newest.labels)
    for key in (RUNNING_ADAPTERS, WAITING_ADAPTERS):
        names = (n.strip() for s in recent for n in s.labels.get(key, "").split(","))
        labels[key] = ",".join(dict.fromkeys(n for n in names if n))
    return series_line(LORA_INFO, labels, newest.value)


def _edited(page: str, lines: list[str], edits: Mapping[int, str | None]) -> str:
    if not edits:
        return page if page.endswith("\n") or not page else page + "\n"
    out = [edits.get(i, line) for i, line in enumerate(lines)]
    text = "\n".join(line for line in out if line is not None)
    return text if text.endswith("\n") else text + "\n"


class AdapterLoraInfo:
    """`vllm:lora_requests_info` for an engine that has no such family (SGLang), rendered when a page is served.

    `running_lora_adapters` lists the adapters outrider has loaded in the engine (read through `loaded`, a callable
    handed in by the supervisor, so this package never imports the adapters domain); `waiting_lora_adapters` is
    empty, as the engine does not say; `max_lora` is the engine's adapters-per-batch when its page tells (see
    `ProtocolPage.max_lora`), else empty, which the picker reads as unknown. The value is the time of rendering:
    the protocol's "last updated" stamp. With no adapter loaded and no max_lora known the family is left out,
    which the protocol reads as "no adapter loaded".
    """

    def __init__(self, loaded: Callable[[], Iterable[str]], clock: Callable[[], float] = time.time) -> None:
        self._loaded = loaded
        self._clock = clock

    def render(self, max_lora: int | None) -> str:
        names = sorted(set(self._loaded()))
        if not names and max_lora is None:
            return ""
        labels = {
            MAX_LORA: "" if max_lora is None else str(max_lora),
            RUNNING_ADAPTERS: ",".join(names),
            WAITING_ADAPTERS: "",
        }
        help_text = "LoRA adapters outrider has loaded in the engine, and its adapters per batch (max_lora)."
        return _family(LORA_INFO, help_text, series_line(LORA_INFO, labels, self._clock()))
