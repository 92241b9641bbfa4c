"""Which publishers the KV indexer subscribes to: vLLM's /kv_event_sources answer, or vLLM's port rule."""

from __future__ import annotations

import pytest

from outrider.kvevents.ranks import RankEndpoints, offset_plan, plan_from_sources
from outrider.option_types import rank_endpoint


def source(endpoint: str, replay: str | None) -> dict[str, object]:
    """One rank's entry as vLLM 0.32's route answers it (KVEventsConfig's fields)."""
    return {
        "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint, "replay_endpoint": replay,
        "buffer_steps": 10000, "hwm": 100000, "max_queue_size": 100000, "topic": "kv-events",
    }  # fmt: skip


def test_every_rank_vllm_lists_is_reached_at_the_configured_host() -> None:
    answer = {"0": source("tcp://*:5557", "tcp://*:5567"), "1": source("tcp://*:5558", "tcp://*:5568")}
    answer["2"] = source("tcp://10.0.0.7:41234", None)  # vLLM on tcp://*:0 names the node's address and port
    plan = plan_from_sources(answer, "tcp://127.0.0.1:5557", None)
    assert plan == {
        0: RankEndpoints("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5567"),
        1: RankEndpoints("tcp://127.0.0.1:5558", "tcp://127.0.0.1:5568"),
        2: RankEndpoints("tcp://10.0.0.7:41234", None),
    }


def test_rank_0_keeps_what_the_operator_configured_and_junk_entries_are_left_out() -> None:
    answer = {
        "0": source("tcp://*:9999", "tcp://*:9998"),
        "1": source("http://x:1", None),  # no ZMQ endpoint
        "2": "not an object",
        "x": source("tcp://*:5559", None),
        "3": {**source("tcp://*:5560", None), "publisher": "null"},
        "4": source("tcp://*:5561", "garbage"),
    }
    plan = plan_from_sources(answer, "tcp://engine:5557", "tcp://engine:6000")
    assert plan == {
        0: RankEndpoints("tcp://engine:5557", "tcp://engine:6000"),
        4: RankEndpoints("tcp://engine:5561", None),
    }
    assert plan_from_sources({}, "tcp://engine:5557", None) == {0: RankEndpoints("tcp://engine:5557", None)}
    with pytest.raises(ValueError):
        plan_from_sources(["0"], "tcp://engine:5557", None)


def test_without_the_route_ranks_follow_vllms_port_rule() -> None:
    assert offset_plan("tcp://*:5557", "tcp://*:5567", 3) == {
        0: RankEndpoints("tcp://*:5557", "tcp://*:5567"),
        1: RankEndpoints("tcp://*:5558", "tcp://*:5568"),
        2: RankEndpoints("tcp://*:5559", "tcp://*:5569"),
    }
    assert offset_plan("ipc:///tmp/kv", None, 1) == {0: RankEndpoints("ipc:///tmp/kv", None)}
    assert rank_endpoint("tcp://*:0", 3) == "tcp://*:0"  # the OS picks each rank's port
    for endpoint, rank in (("ipc:///tmp/kv", 1), ("tcp://*:65535", 1)):
        with pytest.raises(ValueError):
            rank_endpoint(endpoint, rank)
