"""The KV indexer's shutdown cleanup and its Redis client, and how it reports a failed write.

No test here waits on the wall clock: the cleanup thread is held on an event, and the cleanup's timeout runs on
trio's MockClock, moved by hand (autojump would also jump while a thread works, and so race it).
"""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, Counter, Gauge

from outrider.kvevents.index import PodIndex
from outrider.kvevents.indexer import CLEANUP_TIMEOUT, KvIndexer
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Item, Subscriber


class IdleSubscriber(Subscriber):
    """Starts and then delivers nothing."""

    def __init__(self) -> None:
        self.endpoint = "tcp://127.0.0.1:1"
        self.replay_endpoint = "tcp://127.0.0.1:2"
        self.rank = self.epoch = 0  # one rank, and no engine to ask for others

    async def run(
        self, send: trio.MemorySendChannel[list[Item]], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()


class FakeWriter(RedisWriter):
    """Records how its client is used. `remove_all` blocks until `release` is set; writes fail while `failing`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.closed = threading.Event()
        self.closes = 0
        self.removing = False
        self.removes = 0
        self.closed_while_removing = False
        self.failing = False

    def close(self) -> None:
        self.closes += 1
        if self.removing:
            self.closed_while_removing = True
        self.closed.set()

    def resync(self, model: str, wanted: object) -> None:
        if self.failing:
            raise ConnectionError("Redis is down")

    def remove_all(self) -> None:
        self.removes += 1
        self.removing = True
        self.entered.set()
        try:
            self.release.wait()
        finally:
            self.removing = False


def make_indexer(writer: FakeWriter) -> KvIndexer:
    metrics = KvMetrics(CollectorRegistry())
    return KvIndexer(
        subscriber=IdleSubscriber(), writer=writer, index=PodIndex(16), metrics=metrics, model=lambda: "tiny"
    )


def sample(metric: Counter | Gauge, name: str, **labels: str) -> float | None:
    """A sample's value through the public collect() (as a scrape sees it)."""
    for family in metric.collect():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def run_then_shut_down(indexer: KvIndexer) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(indexer.run)
        nursery.cancel_scope.cancel()


async def test_a_shutdown_that_stops_waiting_for_the_cleanup_leaves_the_client_to_its_thread(
    mock_clock: trio.testing.MockClock,
) -> None:
    writer = FakeWriter()
    indexer = make_indexer(writer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_then_shut_down, indexer)
            await trio.to_thread.run_sync(writer.entered.wait)  # the cleanup thread is in remove_all, and hangs
            mock_clock.jump(CLEANUP_TIMEOUT)  # the shutdown gives up on it
        assert writer.removing and writer.closes == 0  # the client is still in use: not closed under it
    finally:
        writer.release.set()
    await trio.to_thread.run_sync(writer.closed.wait)  # the thread closes it once its call is over
    assert writer.closes == 1 and not writer.closed_while_removing
    assert sample(indexer.metrics.resyncs, "outrider_kv_resyncs_total", reason="shutdown") == 0


async def test_a_cleanup_that_finishes_in_time_closes_the_client_once(mock_clock: trio.testing.MockClock) -> None:
    writer = FakeWriter()
    writer.release.set()
    indexer = make_indexer(writer)
    await run_then_shut_down(indexer)
    assert writer.removes == 1 and writer.closes == 1 and not writer.closed_while_removing
    assert sample(indexer.metrics.resyncs, "outrider_kv_resyncs_total", reason="shutdown") == 1


async def test_a_cleanup_that_never_got_a_thread_is_closed_by_the_loop(mock_clock: trio.testing.MockClock) -> None:
    # Every thread slot is busy for longer than the cleanup may take: its thread never starts, so the loop closes.
    limiter = trio.to_thread.current_default_thread_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        limiter.acquire_on_behalf_of_nowait(holder)
    writer = FakeWriter()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_then_shut_down, make_indexer(writer))
            await trio.testing.wait_all_tasks_blocked()  # the cleanup waits for a thread slot
            mock_clock.jump(CLEANUP_TIMEOUT)
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    assert writer.removes == 0 and writer.closes == 1


async def test_a_failed_redis_write_is_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    writer = FakeWriter()
    indexer = make_indexer(writer)
    assert sample(indexer.metrics.redis_up, "outrider_kv_redis_up") == 0

    async def write(failing: bool) -> bool:
        writer.failing = failing
        indexer.index.full_resync = True  # something to write each time
        return await indexer.flush("tiny")

    def warnings() -> int:
        return sum(1 for r in caplog.records if r.levelno == logging.WARNING and "Redis write failed" in r.message)

    with caplog.at_level(logging.WARNING, logger="outrider.kvevents.indexer"):
        assert not await write(failing=True)  # Redis never seen up: not a transition (as before)
        assert warnings() == 0
        assert await write(failing=False)
        assert sample(indexer.metrics.redis_up, "outrider_kv_redis_up") == 1
        assert not await write(failing=True)
        assert not await write(failing=True)
        assert warnings() == 1  # the outage, not each retry
        assert sample(indexer.metrics.redis_up, "outrider_kv_redis_up") == 0
        assert await write(failing=False)
        assert not await write(failing=True)
        assert warnings() == 2
