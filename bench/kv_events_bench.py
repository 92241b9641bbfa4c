"""KV events: publisher -> outrider -> Redis throughput (events/s) and end-to-end lag, on this machine.

    python bench/kv_events_bench.py [--burst 20000] [--rate 2000] [--seconds 5]

A local publisher speaking vLLM's wire protocol (tests/fakes/kv_publisher.py) sends batches of BlockStored events,
each a distinct 16-token block (one router key each); outrider's indexer (in this process, its own thread for ZMQ,
worker threads for Redis) writes them to a real redis-server. Arrival is observed from outside: Redis keyspace
notifications, received by a separate client, timestamp when each key's field lands. Lag = landing time - send time.
Burst: everything sent at once, events/s = events / (last landing - first send). Paced: a steady rate, lag p50/p99.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.kv_publisher import KvPublisher, batch, stored
from tests.redis_server import RedisServer, redis_server

from outrider.kvevents.hashing import chunk_hash, redis_key
from outrider.kvevents.index import PodIndex
from outrider.kvevents.indexer import KvIndexer
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Subscriber

EVENTS_PER_BATCH = 4


class Landings(threading.Thread):
    """Records when each router key first receives an hset, from Redis keyspace notifications."""

    def __init__(self, srv: RedisServer, expected: int) -> None:
        super().__init__(daemon=True)
        self.client = srv.client()
        self.client.config_set("notify-keyspace-events", "Kh")
        self.pubsub = self.client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
        self.pubsub.psubscribe("__keyspace@0__:matrix:kv:block:*")
        self.pubsub.get_message(timeout=1)  # the subscribe confirmation
        self.expected = expected
        self.seen: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        prefix = len("__keyspace@0__:")
        while len(self.seen) < self.expected:
            msg = self.pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "pmessage" and msg["data"] == "hset":
                self.seen.setdefault(msg["channel"][prefix:], time.monotonic())
        self.done.set()


def make_batches(n: int, rng: random.Random, start_hash: int) -> list[tuple[bytes, list[str]]]:
    out = []
    h = start_hash
    for _ in range(n):
        events, keys = [], []
        for _ in range(EVENTS_PER_BATCH):
            tokens = [rng.randrange(1 << 20) for _ in range(16)]
            events.append(stored([h], None, tokens, 16))
            keys.append(redis_key("bench", chunk_hash(tokens)))
            h += 1
        out.append((batch(events), keys))
    return out


def publish(pub: KvPublisher, batches: list[tuple[bytes, list[str]]], rate: float | None) -> dict[str, float]:
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    for i, (payload, keys) in enumerate(batches):
        if rate is not None:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        now = time.monotonic()
        for k in keys:
            sent[k] = now
        pub.publish(payload, buffer=False)
    return sent


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def run_phase(srv: RedisServer, pub: KvPublisher, batches: list[tuple[bytes, list[str]]], rate: float | None) -> None:
    landings = Landings(srv, len(batches) * EVENTS_PER_BATCH)
    landings.start()
    sent = publish(pub, batches, rate)
    if not landings.done.wait(timeout=120):
        print(f"  only {len(landings.seen)} of {landings.expected} keys landed")
    lags = [landings.seen[k] - sent[k] for k in sent if k in landings.seen]
    first, last = min(sent.values()), max(landings.seen.values())
    label = "burst" if rate is None else f"paced at {rate * EVENTS_PER_BATCH:.0f} events/s"
    print(
        f"  {label}: {len(lags)} events in {last - first:.2f} s = {len(lags) / (last - first):,.0f} events/s; "
        f"lag p50 {percentile(lags, 50) * 1000:.1f} ms, p99 {percentile(lags, 99) * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    with redis_server() as srv:
        pub = KvPublisher(replay=False)
        metrics = KvMetrics(CollectorRegistry())
        indexer = KvIndexer(
            subscriber=Subscriber(pub.endpoint, "kv-events", metrics),
            writer=RedisWriter(srv.url, "bench-pod.default"),
            index=PodIndex(16),
            metrics=metrics,
            model=lambda: "bench",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(indexer.run)
            await trio.to_thread.run_sync(pub.wait_for_subscriber)
            print(f"{EVENTS_PER_BATCH} BlockStored events (one 16-token block each) per batch")
            burst = make_batches(args.burst, rng, 1)
            await trio.to_thread.run_sync(run_phase, srv, pub, burst, None)
            paced = make_batches(int(args.rate * args.seconds), rng, 10_000_000)
            await trio.to_thread.run_sync(run_phase, srv, pub, paced, args.rate)
            print(
                f"  Redis writes: {indexer.writes}, failures {metrics.redis_failures._value.get():.0f}, "
                f"dropped batches {metrics.dropped._value.get():.0f}"
            )
            nursery.cancel_scope.cancel()
        pub.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=20_000, help="batches sent at once")
    parser.add_argument("--rate", type=float, default=1000, help="batches per second in the paced phase")
    parser.add_argument("--seconds", type=float, default=5, help="length of the paced phase")
    trio.run(main, parser.parse_args())
