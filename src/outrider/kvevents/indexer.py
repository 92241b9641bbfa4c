"""The KV-event indexer: subscriber thread -> PodIndex -> Redis, as one loop for the service's nursery.

Three tasks share the index, all on the event loop (so the index needs no lock):
- the subscriber (its own thread) delivers items into a bounded channel;
- the consumer applies them to the index and wakes the flusher;
- the flusher takes the pending changes and writes them in one pipelined call in a worker thread. While a write is in
  flight the consumer keeps consuming; changes to a key coalesce, so a slow Redis costs round trips, not memory.

Failures: a Redis write that fails is counted, the index is asked for a full resync (its pending changes dropped,
so memory stays bounded), and the flusher retries with backoff; the first success after failures rewrites the whole
advertisement, which also repairs a Redis that came back empty. Nothing here raises out of `run` but Cancelled.
At shutdown every field this pod owns is removed (shielded, bounded by `CLEANUP_TIMEOUT`). The thread doing that
closes the Redis client itself when it ends, so a shutdown that stops waiting for it never closes the client under
a call still running.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import httpx
import trio

from outrider.backoff import Backoff
from outrider.kvevents.index import PodIndex
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Item, Received, Reset, Subscriber

log = logging.getLogger(__name__)

# Lists of items (each up to subscriber.MAX_DRAIN messages) the channel holds before the subscriber drops.
CHANNEL_LISTS = 64
# Batch timestamps kept for the lag histogram between two writes; beyond it lag is sampled, not all recorded.
MAX_LAG_SAMPLES = 10_000
# Time a shutdown gives the final removal of this pod's fields.
CLEANUP_TIMEOUT = 5.0
# Redis writes: retried soon (a blip should not delay the router's view), at most every 10 s during an outage.
FLUSH_BACKOFF = Backoff(initial=0.1, cap=10.0)
# Asking the engine for its replay endpoint: it may still be starting; once a minute or two is plenty after that.
DISCOVERY_BACKOFF = Backoff(initial=1.0, cap=30.0)
# A batch timestamp further than this from our clock is not believed (clock skew, or a broken publisher).
MAX_CLOCK_SKEW = 3600.0


class KvIndexer:
    def __init__(
        self,
        *,
        subscriber: Subscriber,
        writer: RedisWriter,
        index: PodIndex,
        metrics: KvMetrics,
        model: Callable[[], str | None],
        engine_base_url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.writer = writer
        self.index = index
        self.metrics = metrics
        self._model = model
        self._engine_base_url = engine_base_url
        self._headers = headers or {}
        self._dirty = trio.Event()
        self._lag_ts: list[float] = []
        self._reason: str | None = "restart"  # a fresh start rewrites: a previous life may have left fields behind
        self.index.full_resync = True
        self.writes = 0  # successful writes, for tests and the bench
        # What the redis_up gauge says (it starts at 0), kept here to log a transition without reading the gauge.
        self._redis_up = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel[list[Item]](CHANNEL_LISTS)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.subscriber.run, send)
                nursery.start_soon(self._consume, recv)
                nursery.start_soon(self._flush_loop)
                if self.subscriber.replay_endpoint is None and self._engine_base_url is not None:
                    nursery.start_soon(self._discover_replay)
                self._dirty.set()
                task_status.started()
        finally:
            closer = _Closer(self.writer.close)
            with trio.move_on_after(CLEANUP_TIMEOUT) as scope:
                scope.shield = True
                try:
                    await trio.to_thread.run_sync(self._remove_all_then_close, closer, abandon_on_cancel=True)
                    self.metrics.resyncs.labels("shutdown").inc()
                except Exception as exc:
                    log.warning("KV events: could not remove this pod's fields at shutdown: %s", _short(exc))
            # The thread closes the client if it started (now, or when its calls end if it was abandoned); if the
            # timeout came before it started, it never will, and the client is closed here.
            closer.claim_and_close("loop")

    def _remove_all_then_close(self, closer: _Closer) -> None:
        """Thread: remove this pod's fields, then close the client (the thread owns it to its end)."""
        if not closer.claim("thread"):
            return  # the loop gave up before this thread started, and closed the client
        try:
            self.writer.remove_all()
        finally:
            closer.close()

    # -- consuming --

    async def _consume(self, recv: trio.MemoryReceiveChannel[list[Item]]) -> None:
        async for items in recv:
            try:
                self.apply(items)
            except Exception:  # a bug must not stop consumption: rebuild from a clean state instead
                log.exception("KV events: failed to apply a batch; rebuilding the advertisement")
                self.index.clear()
                self._reason = "gap"
            self._dirty.set()

    def apply(self, items: list[Item]) -> None:
        m = self.metrics
        for item in items:
            if isinstance(item, Reset):
                self.index.clear()
                self._reason = item.reason
                self._lag_ts.clear()
                continue
            assert isinstance(item, Received)
            batch = item.batch
            now = time.time()
            ts = batch.ts if math.isfinite(batch.ts) and abs(batch.ts - now) < MAX_CLOCK_SKEW else now
            overflows = self.index.overflows
            stats = self.index.apply(batch.events, int(ts))
            if stats.cleared:
                self._reason = "cleared"
            if self.index.overflows != overflows:
                self._reason = "overflow"
            if stats.unplaced_blocks:
                m.skipped_blocks.labels("unplaced").inc(stats.unplaced_blocks)
            if stats.unattributed_blocks:
                m.skipped_blocks.labels("unattributed").inc(stats.unattributed_blocks)
            if stats.unknown_removals:
                m.skipped_blocks.labels("unknown_removal").inc(stats.unknown_removals)
            if len(self._lag_ts) < MAX_LAG_SAMPLES:
                self._lag_ts.append(ts)
        m.advertised.set(self.index.advertised)
        m.tracked.set(self.index.tracked_blocks)

    # -- writing --

    async def _flush_loop(self) -> None:
        delays = FLUSH_BACKOFF.delays()
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            model = self._model()
            if model is None:  # the served model name is not known yet: keep indexing, write later
                await trio.sleep(0.5)
                self._dirty.set()
                continue
            if await self.flush(model):
                delays = FLUSH_BACKOFF.delays()
            else:
                await trio.sleep(next(delays))
                self._dirty.set()

    async def flush(self, model: str) -> bool:
        """Write what is pending; True on success (or nothing to do)."""
        full, changes = self.index.take()
        if not full and not changes:
            return True
        lag_ts, self._lag_ts = self._lag_ts, []
        m = self.metrics
        started = time.monotonic()
        try:
            if full:
                snapshot = self.index.snapshot()
                await trio.to_thread.run_sync(self.writer.resync, model, snapshot)
            else:
                await trio.to_thread.run_sync(self.writer.apply, model, changes)
        except Exception as exc:  # redis errors, OSError, anything: the loop owns it
            m.redis_failures.inc()
            if self._redis_up:  # log the transition, not every retry
                log.warning("KV events: Redis write failed (%s); will resync when it is back", _short(exc))
            self._redis_up = False
            m.redis_up.set(0)
            self.index.full_resync = True
            self.index.pending.clear()
            if self._reason is None:
                self._reason = "redis_recovered"
            return False
        finished = time.monotonic()
        m.redis_write.observe(finished - started)
        self._redis_up = True
        m.redis_up.set(1)
        if full:
            m.resyncs.labels(self._reason or "overflow").inc()
            self._reason = None
        now = time.time()
        for ts in lag_ts:
            m.lag.observe(max(0.0, now - ts))
        self.writes += 1
        return True

    # -- replay endpoint discovery (vLLM serves its publisher settings) --

    async def _discover_replay(self) -> None:
        assert self._engine_base_url is not None
        url = self._engine_base_url.rstrip("/") + "/kv_event_sources"
        delays = DISCOVERY_BACKOFF.delays()
        async with httpx.AsyncClient(timeout=5.0, headers=self._headers) as client:
            while self.subscriber.replay_endpoint is None:
                try:
                    r = await client.get(url)
                    if r.status_code == 404:
                        return  # an engine without the route (SGLang, older vLLM): no replay
                    r.raise_for_status()
                    found = replay_endpoint_from_sources(r.json())
                    if found is None:
                        return  # the engine publishes without a replay endpoint
                    self.subscriber.replay_endpoint = found
                    log.info("KV events: the engine offers replay at %s", found)
                    return
                except (httpx.HTTPError, ValueError) as exc:
                    log.debug("KV events: replay discovery: %s", _short(exc))
                await trio.sleep(next(delays))


class _Closer:
    """Who closes the Redis client at shutdown: the first to claim it, the cleanup thread or the event loop."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._owner: str | None = None

    def claim(self, who: str) -> bool:
        with self._lock:
            if self._owner is None:
                self._owner = who
            return self._owner == who

    def close(self) -> None:
        self._close()

    def claim_and_close(self, who: str) -> None:
        if self.claim(who):
            self.close()


def replay_endpoint_from_sources(sources: object) -> str | None:
    """The replay endpoint of data-parallel rank 0 in vLLM's `/kv_event_sources` answer, if it names one."""
    if not isinstance(sources, dict):
        raise ValueError("kv_event_sources is not an object")
    rank0 = sources.get("0", sources.get(0))
    if not isinstance(rank0, dict):
        return None
    endpoint = rank0.get("replay_endpoint")
    return endpoint if isinstance(endpoint, str) and endpoint else None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:200] + "..."
