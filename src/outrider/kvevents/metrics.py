"""Metrics of the KV-event indexer, registered in outrider's own registry (served on /metrics beside the others)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from outrider.metrics.families import SUB_SECOND, Families

EVENT_TYPES = ("BlockStored", "BlockRemoved", "AllBlocksCleared", "unknown")
# Why the whole advertisement was rewritten: a closed set, so the label cannot grow.
RESYNC_REASONS = ("cleared", "restart", "gap", "overflow", "redis_recovered", "shutdown")
REPLAY_RESULTS = ("complete", "incomplete", "failed")
SKIP_REASONS = ("unplaced", "unattributed", "unknown_removal")


class KvMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        new = Families(registry)
        self.events = new.counter(
            "outrider_kv_events_received", "KV-cache events received from the engine, by type.", type=EVENT_TYPES
        )
        self.batches = new.counter("outrider_kv_event_batches_received", "Event batches received.")
        self.malformed = new.counter(
            "outrider_kv_events_malformed", "Messages or events that did not follow the wire format and were skipped."
        )
        self.gaps = new.counter("outrider_kv_event_gaps", "Sequence gaps seen on the event stream.")
        self.duplicates = new.counter("outrider_kv_event_duplicates", "Batches received twice and dropped.")
        self.replays = new.counter(
            "outrider_kv_event_replays", "Replay requests to the engine, by result.", result=REPLAY_RESULTS
        )
        self.dropped = new.counter(
            "outrider_kv_event_batches_dropped",
            "Batches dropped because the indexer fell behind (each drop leads to a resync).",
        )
        self.resyncs = new.counter(
            "outrider_kv_resyncs", "Full rewrites of this pod's advertisement, by reason.", reason=RESYNC_REASONS
        )
        self.skipped_blocks = new.counter(
            "outrider_kv_blocks_skipped", "Engine blocks that could not be advertised, by reason.", reason=SKIP_REASONS
        )
        self.redis_write = new.histogram(
            "outrider_kv_redis_write_seconds",
            "Time taken by one pipelined Redis write (a batch of changes or a resync).",
            # A small batch to a Redis nearby takes well under a millisecond: one bound more at the low end.
            (0.0005, *SUB_SECOND),
        )
        self.redis_failures = new.counter("outrider_kv_redis_failures", "Redis writes that failed.")
        self.redis_up = new.gauge("outrider_kv_redis_up", "1 when the last Redis write succeeded, else 0.")
        self.advertised = new.gauge(
            "outrider_kv_blocks_advertised", "Router keys (token chunks) this pod currently advertises in its index."
        )
        self.tracked = new.gauge("outrider_kv_engine_blocks_tracked", "Engine blocks currently tracked.")
        self.ranks = new.gauge(
            "outrider_kv_event_ranks", "Data-parallel ranks of the engine whose KV-event publishers are subscribed."
        )
        self.lag = new.histogram(
            "outrider_kv_event_lag_seconds",
            "Time from the engine stamping a batch to its changes being written to Redis.",
            # The lag adds the engine's batching and writes waited behind: one bound more at the high end.
            (*SUB_SECOND, 10.0),
        )
