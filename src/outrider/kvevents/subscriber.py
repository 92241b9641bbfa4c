"""The ZMQ side: one thread owns the sockets, orders the stream, and feeds a trio memory channel.

pyzmq's sockets are blocking and not thread-safe, so they live in one worker thread and the event loop never waits
on them. The thread:
- subscribes to the engine's PUB endpoint and watches the connection (a socket monitor): a dropped connection means
  the engine went down, so its cache is gone (`Reset("restart")`);
- checks sequence numbers: a number lower than expected is a duplicate (dropped), except 0, which is a publisher that
  restarted (`Reset("restart")`); a jump is a gap, filled from the engine's replay endpoint when it has one (vLLM's
  ROUTER socket: send `[b"", start_seq]`, receive `[b"", topic, seq, payload]`... and `[b"", b"", -1, b""]` at the
  end), else the state can no longer be trusted (`Reset("gap")`); right after (re)connecting it asks the replay
  endpoint for everything before the first message, so that a restarted outrider relearns what the engine holds;
- decodes payloads (an unreadable one is a lost batch: `Reset("gap")`) and hands lists of items to trio without ever
  blocking: when the channel is full the items are dropped and the next delivery starts with `Reset("overflow")`,
  so memory stays bounded and the consumer rebuilds rather than trusting a stream with holes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import trio
import zmq
from zmq.utils.monitor import recv_monitor_message

from outrider.backoff import Backoff
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.wire import Batch, UnknownEvent, WireError, decode_batch, split_frames

log = logging.getLogger(__name__)

# How long one poll waits before the thread checks for cancellation: the bound on how late a shutdown stops it.
POLL_MS = 100
# Messages taken from the socket per hand-off to trio: one thread-to-loop hop per batch of messages, not per message.
MAX_DRAIN = 512
# ZMQ's receive queue (messages). Beyond it ZMQ drops and the sequence numbers show the gap.
RCV_HWM = 100_000
# A replay answer is a local burst; an engine that has not finished within this is treated as not answering.
REPLAY_TIMEOUT = 2.0
END_SEQ = (-1).to_bytes(8, "big", signed=True)
# Restarting a failed subscriber thread: at once-ish for a blip, at most every 10 s while the engine is away.
RESTART_BACKOFF = Backoff(initial=0.5, cap=10.0)


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    seq: int
    batch: Batch
    rank: int = 0  # the data-parallel rank whose publisher sent it (each rank is its own stream)
    epoch: int = 0  # which subscription to that rank: items of one that was replaced are stale


@dataclasses.dataclass(frozen=True, slots=True)
class Reset:
    """One rank's cache state is unknown from here on: forget that rank's blocks and rewrite the advertisement."""

    reason: str  # "restart", "gap" or "overflow"
    rank: int = 0
    epoch: int = 0


Item = Received | Reset


def connect_address(endpoint: str) -> str:
    """An endpoint as a subscriber connects to it: a bind wildcard (`tcp://*:5557`) means this host."""
    return endpoint.replace("//*:", "//127.0.0.1:", 1).replace("//0.0.0.0:", "//127.0.0.1:", 1)


class Subscriber:
    """Subscribes to one engine publisher (one data-parallel rank's). `replay_endpoint` may be set (or changed)
    while it runs. Every item it delivers carries its `rank` and `epoch`."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        metrics: KvMetrics,
        *,
        replay_endpoint: str | None = None,
        rank: int = 0,
        epoch: int = 0,
    ) -> None:
        self.endpoint = connect_address(endpoint)
        self.topic_text = topic
        self.topic = topic.encode()
        self.replay_endpoint = replay_endpoint
        self.rank = rank
        self.epoch = epoch
        self._metrics = metrics
        self._expected: int | None = None  # next sequence number; None right after (re)connecting
        self._overflowed = False

    async def run(
        self, send: trio.MemorySendChannel[list[Item]], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the socket thread until cancelled (it notices within POLL_MS). Reports started once connecting.

        A failure before the first connect attempt (a malformed endpoint) raises out of `nursery.start`; after it,
        the loop owns its failures: it logs, waits, and starts the thread again with a fresh state.
        """
        # A limiter of its own: this thread lives as long as the service and must not hold a slot of the shared one.
        limiter = trio.CapacityLimiter(1)
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        delays = RESTART_BACKOFF.delays()
        while True:
            try:
                await trio.to_thread.run_sync(self._thread_main, send, report_started, limiter=limiter)
            except Exception:
                if not started:
                    raise
                log.exception("KV events: the subscriber thread failed; restarting it")
            self._expected = None
            await trio.sleep(next(delays))
            self._overflowed = True  # whatever was in flight is lost: the next delivery starts with a reset

    # -- everything below runs in the worker thread --

    def for_rank(self, rank: int, endpoint: str, replay_endpoint: str | None, epoch: int) -> Subscriber:
        """A subscriber like this one (topic, metrics) for another rank's publisher."""
        return Subscriber(
            endpoint, self.topic_text, self._metrics, replay_endpoint=replay_endpoint, rank=rank, epoch=epoch
        )

    def _reset(self, reason: str) -> Reset:
        return Reset(reason, self.rank, self.epoch)

    def _thread_main(self, send: trio.MemorySendChannel[list[Item]], report_started: Callable[[], None]) -> None:
        ctx = zmq.Context()
        try:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, RCV_HWM)
            sub.setsockopt(zmq.SUBSCRIBE, self.topic)
            monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            sub.connect(self.endpoint)
            trio.from_thread.run_sync(report_started)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            while True:
                trio.from_thread.check_cancelled()
                ready = dict(poller.poll(POLL_MS))
                out: list[Item] = []
                if monitor in ready:
                    self._on_monitor(monitor, out)
                if sub in ready:
                    for _ in range(MAX_DRAIN):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(ctx, frames, out)
                if out:
                    self._deliver(send, out)
        finally:
            ctx.destroy(linger=0)

    def _on_monitor(self, monitor: zmq.Socket[bytes], out: list[Item]) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                log.info("KV events: lost the connection to %s; the engine's cache is taken as gone", self.endpoint)
                self._expected = None
                out.append(self._reset("restart"))
            elif event["event"] == zmq.EVENT_CONNECTED:
                log.info("KV events: connected to %s", self.endpoint)

    def _on_message(self, ctx: zmq.Context[zmq.Socket[bytes]], frames: list[bytes], out: list[Item]) -> None:
        try:
            _topic, seq, payload = split_frames(frames)
        except WireError as exc:
            self._metrics.malformed.inc()
            log.debug("KV events: skipped a message: %s", exc)
            return
        expected = self._expected
        if expected is None:
            if seq > 0:
                self._replay(ctx, 0, seq, out, catch_up=True)
        elif seq > expected:
            self._metrics.gaps.inc()
            if not self._replay(ctx, expected, seq, out, catch_up=False):
                out.append(self._reset("gap"))
        elif seq < expected:
            if seq != 0:
                self._metrics.duplicates.inc()
                return
            out.append(self._reset("restart"))
        self._expected = seq + 1
        self._decode(seq, payload, out)

    def _decode(self, seq: int, payload: bytes, out: list[Item]) -> None:
        m = self._metrics
        m.batches.inc()
        try:
            batch = decode_batch(payload)
        except WireError as exc:
            m.malformed.inc()
            log.warning("KV events: batch %d is unreadable (%s); rebuilding the advertisement", seq, exc)
            out.append(self._reset("gap"))
            return
        if batch.malformed:
            m.malformed.inc(batch.malformed)
        for event in batch.events:
            m.events.labels("unknown" if isinstance(event, UnknownEvent) else type(event).__name__).inc()
        out.append(Received(seq, batch, self.rank, self.epoch))

    def _replay(
        self, ctx: zmq.Context[zmq.Socket[bytes]], start: int, stop: int, out: list[Item], *, catch_up: bool
    ) -> bool:
        """Fetch batches start..stop-1 from the replay endpoint. True when all of them came.

        For a gap only a complete range is used. When catching up after (re)connecting, the longest run ending at
        stop-1 is used even if older batches are gone from the engine's buffer: events are facts in order, and
        blocks whose parents fell out of the buffer are skipped by the index, not guessed.
        """
        endpoint = self.replay_endpoint
        if endpoint is None:
            return False
        got: dict[int, bytes] = {}
        sock = ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(connect_address(endpoint))
            sock.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = time.monotonic() + REPLAY_TIMEOUT
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not sock.poll(left_ms):
                    break
                frames = sock.recv_multipart()
                if len(frames) != 4 or frames[2] == END_SEQ:
                    break
                seq = int.from_bytes(frames[2], "big") if len(frames[2]) == 8 else -1
                if start <= seq < stop:
                    got[seq] = frames[3]
        except zmq.ZMQError as exc:
            self._metrics.replays.labels("failed").inc()
            log.warning("KV events: replay from %s failed: %s", endpoint, exc)
            return False
        finally:
            sock.close(linger=0)
        complete = len(got) == stop - start
        self._metrics.replays.labels("complete" if complete else "incomplete").inc()
        if complete or catch_up:
            first = stop
            while first - 1 in got:
                first -= 1
            for seq in range(first, stop):
                self._decode(seq, got[seq], out)
        return complete

    def _deliver(self, send: trio.MemorySendChannel[list[Item]], out: list[Item]) -> None:
        items = [self._reset("overflow"), *out] if self._overflowed else out

        def offer() -> bool:
            try:
                send.send_nowait(items)
            except trio.WouldBlock:
                return False
            return True

        if trio.from_thread.run_sync(offer):
            self._overflowed = False
        else:
            self._overflowed = True
            self._metrics.dropped.inc(sum(isinstance(i, Received) for i in out))
