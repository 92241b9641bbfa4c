"""KV events end to end without an engine: a local publisher (vLLM's wire protocol) -> outrider -> a real Redis.

Expected Redis contents are computed here from the token ids with hashlib, independently of outrider's code.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from outrider.kvevents.index import PodIndex
from outrider.kvevents.indexer import KvIndexer
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.ranks import RankEndpoints
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Subscriber
from tests.fakes.engine import FakeEngine
from tests.fakes.kv_publisher import KvPublisher, batch, cleared, removed, stored
from tests.integration.conftest import wait_until
from tests.redis_server import RedisServer, redis_server

POD = "pod-a.default"
MODEL = "tiny"


def keys_for(tokens: list[int], c: int = 16) -> set[str]:
    out = set()
    for i in range(0, len(tokens) - c + 1, c):
        digest = hashlib.sha256(b"".join(struct.pack(">I", t) for t in tokens[i : i + c])).digest()
        out.add(f"matrix:kv:block:{MODEL}@{struct.unpack('>Q', digest[:8])[0] & ~(1 << 63)}")
    return out


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def publisher() -> Iterator[KvPublisher]:
    pub = KvPublisher()
    yield pub
    pub.close()


def make_indexer(pub: KvPublisher, srv: RedisServer, *, replay: bool = True) -> KvIndexer:
    metrics = KvMetrics(CollectorRegistry())
    sub = Subscriber(pub.endpoint, "kv-events", metrics, replay_endpoint=pub.replay_endpoint if replay else None)
    return KvIndexer(
        subscriber=sub, writer=RedisWriter(srv.url, POD), index=PodIndex(16), metrics=metrics, model=lambda: MODEL
    )


async def ours(srv: RedisServer) -> set[str]:
    return set(await trio.to_thread.run_sync(srv.fields_of, POD))


async def wait_for_keys(srv: RedisServer, expected: set[str], what: str) -> None:
    async def check() -> bool:
        return await ours(srv) == expected

    try:
        await wait_until(check, what=what)
    except AssertionError:
        got = await ours(srv)
        raise AssertionError(f"{what}: missing {sorted(expected - got)}, extra {len(got - expected)}") from None


def value(metric: Any, **labels: str) -> float:
    m = metric.labels(**labels) if labels else metric
    return float(m._value.get())


A = list(range(1000, 1064))  # 64 tokens
B = list(range(2000, 2032))
C = list(range(3000, 3048))
D = list(range(4000, 4016))


async def test_both_formats_gaps_duplicates_and_junk_apply_each_event_once(
    publisher: KvPublisher, redis_srv: RedisServer
) -> None:
    indexer = make_indexer(publisher, redis_srv)
    m = indexer.metrics
    with redis_srv.client() as c:
        c.hset(next(iter(keys_for(A))), "other-pod.default", "123")  # another pod's field: never touched
    async with trio.open_nursery() as nursery:
        await nursery.start(indexer.run)
        await trio.to_thread.run_sync(publisher.wait_for_subscriber)
        publisher.publish(batch([stored([11, 12], None, A, 32, "map")]))  # seq 0
        publisher.publish(batch([stored([21, 22], None, B, 16, "array")]))  # seq 1
        remove_a1 = batch(
            [{"type": "BlockMoved", "x": 1}, {"type": "BlockStored", "block_hashes": "bad"}, removed([12])]
        )
        publisher.publish(remove_a1)  # seq 2
        publisher.publish(batch([stored([12], 11, A[32:], 32, "array")]))  # seq 3: A's second block again
        publisher.publish(batch([stored([31], None, C, 48, "map")]), send=False)  # seq 4: lost, replayable
        publisher.publish(batch([removed([21, 22], "array")]))  # seq 5
        publisher.publish(remove_a1, seq=2)  # a duplicate: applying it twice would remove A's second block
        publisher.next_seq = 6
        publisher.publish(batch([stored([41], None, D, 16, "map")]))  # seq 6
        await wait_for_keys(redis_srv, keys_for(A) | keys_for(C) | keys_for(D), "A, C (replayed) and D only")
        assert value(m.gaps) == 1 and value(m.duplicates) == 1
        assert value(m.replays, result="complete") == 1
        assert value(m.events, type="unknown") == 1 and value(m.malformed) == 1
        assert value(m.events, type="BlockStored") == 5 and value(m.events, type="BlockRemoved") == 2
        assert value(m.advertised) == len(keys_for(A) | keys_for(C) | keys_for(D))
        with redis_srv.client() as c:
            stamp = c.hget(next(iter(keys_for(D))), POD)
        assert stamp is not None and abs(int(stamp) - time.time()) < 60  # the batch's unix time, in seconds

        publisher.publish(batch([cleared("array")]))
        await wait_for_keys(redis_srv, set(), "nothing after AllBlocksCleared")
        publisher.publish(batch([stored([51], None, B, 32, "map")]))
        await wait_for_keys(redis_srv, keys_for(B), "B after the clear")
        nursery.cancel_scope.cancel()
    assert await ours(redis_srv) == set(), "shutdown must remove every field of this pod"
    with redis_srv.client() as c:
        assert c.hget(next(iter(keys_for(A))), "other-pod.default") == "123"


async def test_without_replay_gaps_garbage_and_restarts_rebuild_from_scratch(
    publisher: KvPublisher, redis_srv: RedisServer
) -> None:
    indexer = make_indexer(publisher, redis_srv, replay=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(indexer.run)
        await trio.to_thread.run_sync(publisher.wait_for_subscriber)
        publisher.publish(batch([stored([11], None, A[:32], 32)]))  # seq 0
        await wait_for_keys(redis_srv, keys_for(A[:32]), "A")
        publisher.publish(batch([stored([21], None, B, 32)]), seq=2)  # seq 1 never comes
        await wait_for_keys(redis_srv, keys_for(B), "only B after an unrecoverable gap")
        publisher.publish(b"\xc1\x00garbage")  # seq 3: an unreadable batch is a lost batch
        publisher.publish(batch([stored([31], None, C[:32], 32)]))  # seq 4
        await wait_for_keys(redis_srv, keys_for(C[:32]), "only C after garbage")
        publisher.publish(batch([stored([41], None, D, 16)]), seq=0)  # the publisher restarted
        await wait_for_keys(redis_srv, keys_for(D), "only D after a sequence reset")
        m = indexer.metrics
        assert value(m.gaps) == 1 and value(m.resyncs, reason="gap") >= 1 and value(m.resyncs, reason="restart") >= 2
        nursery.cancel_scope.cancel()


async def test_redis_outage_is_counted_and_repaired_when_redis_returns(
    publisher: KvPublisher, redis_srv: RedisServer
) -> None:
    indexer = make_indexer(publisher, redis_srv)
    m = indexer.metrics
    async with trio.open_nursery() as nursery:
        await nursery.start(indexer.run)
        await trio.to_thread.run_sync(publisher.wait_for_subscriber)
        publisher.publish(batch([stored([11, 12], None, A, 32)]))
        await wait_for_keys(redis_srv, keys_for(A), "A")
        await trio.to_thread.run_sync(redis_srv.stop)
        publisher.publish(batch([removed([12]), stored([21], None, B, 32)]))

        async def failed() -> bool:
            return value(m.redis_failures) > 0 and value(m.advertised) == len(keys_for(A[:32]) | keys_for(B))

        await wait_until(failed, what="a failed write while Redis is down")
        assert value(m.redis_up) == 0
        await trio.to_thread.run_sync(redis_srv.start)  # same port, empty: everything must be written again
        await wait_for_keys(redis_srv, keys_for(A[:32]) | keys_for(B), "the full advertisement after the outage")
        assert value(m.redis_up) == 1 and value(m.resyncs, reason="redis_recovered") == 1
        nursery.cancel_scope.cancel()


async def test_a_lost_connection_means_the_engines_cache_is_gone(redis_srv: RedisServer) -> None:
    pub = KvPublisher()
    port = int(pub.endpoint.rsplit(":", 1)[1])
    indexer = make_indexer(pub, redis_srv, replay=False)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(indexer.run)
            await trio.to_thread.run_sync(pub.wait_for_subscriber)
            pub.publish(batch([stored([11], None, A[:32], 32)]))
            await wait_for_keys(redis_srv, keys_for(A[:32]), "A")
            pub.close()  # the engine goes down
            await wait_for_keys(redis_srv, set(), "nothing once the engine is gone")
            nursery.cancel_scope.cancel()
    finally:
        pub.close()
    assert port > 0


def source(pub: KvPublisher) -> dict[str, object]:
    """One rank's entry in vLLM's /kv_event_sources answer (its KVEventsConfig fields)."""
    return {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": pub.endpoint,
            "replay_endpoint": pub.replay_endpoint, "topic": "kv-events"}  # fmt: skip


async def test_ranks_listed_by_the_engine_are_followed_and_a_rank_that_goes_is_forgotten(
    nursery: trio.Nursery, engine_pages: dict[str, str], redis_srv: RedisServer
) -> None:
    rank0, rank1 = KvPublisher(), KvPublisher()
    engine = FakeEngine(engine_pages["vllm-0.34.0-dp2.prom"])
    engine.kv_event_sources = {"0": source(rank0), "1": source(rank1)}
    await engine.start(nursery)
    metrics = KvMetrics(CollectorRegistry())
    indexer = KvIndexer(
        subscriber=Subscriber(rank0.endpoint, "kv-events", metrics), writer=RedisWriter(redis_srv.url, POD),
        index=PodIndex(16), metrics=metrics, model=lambda: MODEL, engine_base_url=lambda: engine.base_url,
    )  # fmt: skip
    try:
        async with trio.open_nursery() as inner:
            await inner.start(indexer.run)
            await trio.to_thread.run_sync(rank0.wait_for_subscriber)
            await trio.to_thread.run_sync(rank1.wait_for_subscriber)  # found through the route
            rank0.publish(batch([stored([11, 12], None, A, 32)]))
            rank1.publish(batch([stored([11], None, A[:32], 32), stored([21], None, B, 32)], rank=1))
            await wait_for_keys(redis_srv, keys_for(A) | keys_for(B), "both ranks' blocks")
            assert value(metrics.ranks) == 2
            rank1.publish(batch([removed([11])], rank=1))  # rank 0 still holds A's first block
            rank0.publish(batch([removed([12])]))
            await wait_for_keys(redis_srv, keys_for(A[:32]) | keys_for(B), "A's first block, held by rank 0")

            # The engine scaled down to one rank: rank 1's blocks leave with it, rank 0's stay.
            await indexer.follow({0: RankEndpoints(rank0.endpoint, rank0.replay_endpoint)})
            await wait_for_keys(redis_srv, keys_for(A[:32]), "rank 0's block only")
            assert value(metrics.ranks) == 1
            rank1.publish(batch([stored([31], None, C, 48)], rank=1))  # nobody listens to it any more
            rank0.publish(batch([stored([41], None, D, 16)]))
            await wait_for_keys(redis_srv, keys_for(A[:32]) | keys_for(D), "rank 0's blocks only")
            inner.cancel_scope.cancel()
    finally:
        rank0.close()
        rank1.close()
