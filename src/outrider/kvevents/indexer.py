"""The KV-event indexer: subscriber thread -> PodIndex -> Redis, as one loop for the service's nursery.

Three kinds of task share the index, all on the event loop (so the index needs no lock):
- one subscriber per data-parallel rank of the engine (each its own thread) delivers items into one bounded
  channel; which ranks, and where they publish, comes from the engine (see ranks.py) and is asked again every
  `REDISCOVERY_INTERVAL`, so ranks that come, go or move are followed;
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
from outrider.kvevents.ranks import Plan, RankEndpoints, offset_plan, plan_from_sources
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Item, Received, Reset, Subscriber, connect_address

log = logging.getLogger(__name__)

# Lists of items (each up to subscriber.MAX_DRAIN messages) the channel holds before the subscriber drops.
CHANNEL_LISTS = 64
# Batch timestamps kept for the lag histogram between two writes; beyond it lag is sampled, not all recorded.
MAX_LAG_SAMPLES = 10_000
# Time a shutdown gives the final removal of this pod's fields.
CLEANUP_TIMEOUT = 5.0
# Redis writes: retried soon (a blip should not delay the router's view), at most every 10 s during an outage.
FLUSH_BACKOFF = Backoff(initial=0.1, cap=10.0)
# Asking the engine for its ranks' endpoints: it may still be starting, so soon and then less often.
DISCOVERY_BACKOFF = Backoff(initial=1.0, cap=30.0)
# Asking again once answered: data-parallel ranks can be added or removed at run time (vLLM's elastic scaling) and
# an engine restarted on port 0 publishes elsewhere; one small GET per interval.
REDISCOVERY_INTERVAL = 30.0
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
        engine_base_url: Callable[[], str | None] | None = None,
        ranks: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`subscriber` is rank 0's. `engine_base_url` (read at each discovery, so it may follow a changing engine)
        is where vLLM lists its ranks' publishers; without it, or when the engine lacks the route, `ranks` ranks
        publish by vLLM's port rule (one when None)."""
        self.subscriber = subscriber
        self.writer = writer
        self.index = index
        self.metrics = metrics
        self._model = model
        self._engine_base_url = engine_base_url
        self._ranks = ranks or 1
        self._configured = RankEndpoints(subscriber.endpoint, subscriber.replay_endpoint)
        self._headers = headers or {}
        # The running subscriptions: rank -> (subscriber, its cancel scope). Items of a replaced one are stale.
        self._running: dict[int, tuple[Subscriber, trio.CancelScope]] = {}
        self._epochs = 0
        self._nursery: trio.Nursery | None = None
        self._send: trio.MemorySendChannel[list[Item]] | None = None
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
                self._nursery, self._send = nursery, send
                await self._subscribe(self.subscriber)  # a malformed endpoint raises here, at start
                nursery.start_soon(self._consume, recv)
                nursery.start_soon(self._flush_loop)
                if self._engine_base_url is not None:
                    nursery.start_soon(self._discover)
                else:
                    await self.follow(offset_plan(*self._rank0(), self._ranks))
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
            current = self._running.get(item.rank)
            if (current is None and item.rank != 0) or (current is not None and current[0].epoch != item.epoch):
                continue  # from a subscription since stopped or replaced (rank 0's never is): its rank was cleared
            if isinstance(item, Reset):
                self.index.clear_rank(item.rank)
                self._reason = item.reason
                self._lag_ts.clear()
                continue
            assert isinstance(item, Received)
            batch = item.batch
            now = time.time()
            ts = batch.ts if math.isfinite(batch.ts) and abs(batch.ts - now) < MAX_CLOCK_SKEW else now
            overflows = self.index.overflows
            stats = self.index.apply(batch.events, int(ts), item.rank)
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

    # -- the ranks: which publishers, discovered from the engine --

    def _rank0(self) -> tuple[str, str | None]:
        return self._configured.endpoint, self._configured.replay

    async def _subscribe(self, subscriber: Subscriber) -> None:
        assert self._nursery is not None and self._send is not None
        scope = trio.CancelScope()
        self._running[subscriber.rank] = (subscriber, scope)
        try:
            await self._nursery.start(self._run_subscriber, subscriber, scope, self._send)
        except BaseException:
            del self._running[subscriber.rank]
            raise
        finally:
            self.metrics.ranks.set(len(self._running))

    @staticmethod
    async def _run_subscriber(
        subscriber: Subscriber,
        scope: trio.CancelScope,
        send: trio.MemorySendChannel[list[Item]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await subscriber.run(send, task_status=task_status)

    def _stop(self, rank: int) -> None:
        """Stop a rank's subscription and forget its blocks (its later items are dropped by their epoch)."""
        _, scope = self._running.pop(rank)
        scope.cancel()
        self.metrics.ranks.set(len(self._running))
        self.index.clear_rank(rank)
        self._reason = "restart"
        self._dirty.set()

    async def follow(self, plan: Plan) -> None:
        """Subscribe to the ranks of `plan` (rank 0's publisher is the configured one and keeps running), stop the
        ones it lacks, and restart the ones whose publisher moved."""
        for rank in sorted(set(self._running) - set(plan) - {0}):
            log.info("KV events: rank %d no longer publishes; its blocks are no longer advertised", rank)
            self._stop(rank)
        for rank, wanted in sorted(plan.items()):
            running = self._running.get(rank)
            if running is not None and rank == 0:
                if wanted.replay is not None and running[0].replay_endpoint != wanted.replay:
                    running[0].replay_endpoint = wanted.replay
                    log.info("KV events: rank 0 offers replay at %s", wanted.replay)
                continue
            if running is not None and (running[0].endpoint, running[0].replay_endpoint) == _connect(wanted):
                continue
            if running is not None:
                log.info("KV events: rank %d moved to %s", rank, wanted.endpoint)
                self._stop(rank)
            self._epochs += 1
            subscriber = self.subscriber.for_rank(rank, wanted.endpoint, wanted.replay, self._epochs)
            try:
                await self._subscribe(subscriber)
            except Exception as exc:  # an endpoint the engine offered that zmq refuses: the other ranks go on
                log.warning("KV events: cannot subscribe to rank %d at %s: %s", rank, wanted.endpoint, _short(exc))
                continue
            log.info("KV events: subscribed to rank %d at %s", rank, subscriber.endpoint)

    async def _discover(self) -> None:
        assert self._engine_base_url is not None
        delays = DISCOVERY_BACKOFF.delays()
        async with httpx.AsyncClient(timeout=5.0, headers=self._headers) as client:
            while True:
                base = self._engine_base_url()
                plan = None if base is None else await self._ask(client, base.rstrip("/") + "/kv_event_sources")
                if plan is None:
                    await trio.sleep(next(delays))
                    continue
                await self.follow(plan)
                delays = DISCOVERY_BACKOFF.delays()
                await trio.sleep(REDISCOVERY_INTERVAL)

    async def _ask(self, client: httpx.AsyncClient, url: str) -> Plan | None:
        """The engine's ranks; the port rule when it lacks the route (SGLang, older vLLM); None: ask again soon."""
        try:
            r = await client.get(url)
            if r.status_code == 404:
                return offset_plan(*self._rank0(), self._ranks)
            r.raise_for_status()
            return plan_from_sources(r.json(), *self._rank0())
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("KV events: asking %s for the ranks: %s", url, _short(exc))
            return None


def _connect(wanted: RankEndpoints) -> tuple[str, str | None]:
    """The endpoints as a Subscriber holds them (it connects to a bind wildcard on this host)."""
    return connect_address(wanted.endpoint), wanted.replay


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


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:200] + "..."
