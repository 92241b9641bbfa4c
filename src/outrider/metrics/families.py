"""How outrider declares its metric families: in one registry, a closed label's values created up front, and the
histogram bounds it shares.

A leaf module (it imports prometheus_client only), so that every package with metrics of its own (kvevents,
metrics) can use it without importing the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 1, 2.5 and 5 in every decade: each bound is 2 to 2.5 times the one before, so a quantile read from the buckets is
# within that factor at any scale, for a dozen series per histogram.
# A call to a peer on the pod or its network (the engine's /metrics, a Redis pipeline, an adapter unload): about a
# millisecond when all is well, seconds when it is not; beyond 5 s the caller's timeout has usually ended it anyway.
SUB_SECOND = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_Family = TypeVar("_Family", Counter, Gauge)


class Families:
    """Declares families in `registry`. A counter or gauge has no label or one, named by the keyword that gives its
    values: `reason=REASONS` (a closed set, so the label cannot grow)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, documentation: str, **label: Iterable[str]) -> Counter:
        return _with_values(Counter(name, documentation, _labelnames(label), registry=self.registry), label)

    def gauge(self, name: str, documentation: str, **label: Iterable[str]) -> Gauge:
        return _with_values(Gauge(name, documentation, _labelnames(label), registry=self.registry), label)

    def histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)


def _labelnames(label: dict[str, Iterable[str]]) -> tuple[str, ...]:
    # Values made up front for two labels would be their product; no family needs that, so it is refused.
    if len(label) > 1:
        raise TypeError(f"one label at most, not {sorted(label)}")
    return tuple(label)


def _with_values(family: _Family, label: dict[str, Iterable[str]]) -> _Family:
    for values in label.values():
        for value in values:
            family.labels(value)  # present at 0 from the start, so rate() works at once
    return family
