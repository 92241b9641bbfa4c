"""Metrics of the KV-event indexer, registered in outrider's own registry (served on /metrics beside the others)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

EVENT_TYPES = ("BlockStored", "BlockRemoved", "AllBlocksCleared", "unknown")
# Why the whole advertisement was rewritten: a closed set, so the label cannot grow.
RESYNC_REASONS = ("cleared", "restart", "gap", "overflow", "redis_recovered", "shutdown")
REPLAY_RESULTS = ("complete", "incomplete", "failed")
SKIP_REASONS = ("unplaced", "unattributed", "unknown_removal")


class KvMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.events = Counter(
            "outrider_kv_events_received", "KV-cache events received from the engine, by type.", ["type"], registry=r
        )
        for t in EVENT_TYPES:
            self.events.labels(t)
        self.batches = Counter("outrider_kv_event_batches_received", "Event batches received.", registry=r)
        self.malformed = Counter(
            "outrider_kv_events_malformed",
            "Messages or events that did not follow the wire format and were skipped.",
            registry=r,
        )
        self.gaps = Counter("outrider_kv_event_gaps", "Sequence gaps seen on the event stream.", registry=r)
        self.duplicates = Counter("outrider_kv_event_duplicates", "Batches received twice and dropped.", registry=r)
        self.replays = Counter(
            "outrider_kv_event_replays", "Replay requests to the engine, by result.", ["result"], registry=r
        )
        for res in REPLAY_RESULTS:
            self.replays.labels(res)
        self.dropped = Counter(
            "outrider_kv_event_batches_dropped",
            "Batches dropped because the indexer fell behind (each drop leads to a resync).",
            registry=r,
        )
        self.resyncs = Counter(
            "outrider_kv_resyncs", "Full rewrites of this pod's advertisement, by reason.", ["reason"], registry=r
        )
        for reason in RESYNC_REASONS:
            self.resyncs.labels(reason)
        self.skipped_blocks = Counter(
            "outrider_kv_blocks_skipped",
            "Engine blocks that could not be advertised, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in SKIP_REASONS:
            self.skipped_blocks.labels(reason)
        self.redis_write = Histogram(
            "outrider_kv_redis_write_seconds",
            "Time taken by one pipelined Redis write (a batch of changes or a resync).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.redis_failures = Counter("outrider_kv_redis_failures", "Redis writes that failed.", registry=r)
        self.redis_up = Gauge("outrider_kv_redis_up", "1 when the last Redis write succeeded, else 0.", registry=r)
        self.advertised = Gauge(
            "outrider_kv_blocks_advertised",
            "Router keys (token chunks) this pod currently advertises in its index.",
            registry=r,
        )
        self.tracked = Gauge("outrider_kv_engine_blocks_tracked", "Engine blocks currently tracked.", registry=r)
        self.lag = Histogram(
            "outrider_kv_event_lag_seconds",
            "Time from the engine stamping a batch to its changes being written to Redis.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
