"""Which publishers to subscribe to: one per data-parallel rank of the engine (pure, no I/O).

vLLM runs one KV-event publisher per data-parallel rank, rank r on the configured port plus r (ipc endpoints are
refused for r > 0), and lists every rank's publisher and replay endpoint at `GET /kv_event_sources`:
`{"0": {"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5560", ...}, "1": {...}}`. The plan is read from that
answer when the engine serves it, else made by the same port rule for `--kv-events-ranks` ranks (1 by default).
Rank 0 always keeps the operator's `--kv-events-endpoint` (and `--kv-events-replay-endpoint` when given), so it is
subscribed from the start, before the engine answers; an endpoint the engine binds on a wildcard (`tcp://*:5558`)
is reached at the configured endpoint's host.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from outrider.option_types import MAX_KV_RANKS, ZMQ_ENDPOINT, rank_endpoint

log = logging.getLogger(__name__)

_WILDCARDS = ("*", "0.0.0.0", "[::]", "::")


@dataclasses.dataclass(frozen=True)
class RankEndpoints:
    endpoint: str
    replay: str | None


Plan = dict[int, RankEndpoints]


def offset_plan(endpoint: str, replay: str | None, ranks: int) -> Plan:
    """Ranks 0..ranks-1 by vLLM's port rule, up to the first it cannot place (the command line refuses those)."""
    plan: Plan = {}
    for r in range(ranks):
        try:
            plan[r] = RankEndpoints(rank_endpoint(endpoint, r), None if replay is None else rank_endpoint(replay, r))
        except ValueError as exc:
            log.warning("KV events: only %d of %d ranks can be placed: %s", r, ranks, exc)
            break
    return plan


def plan_from_sources(answer: object, endpoint: str, replay: str | None) -> Plan:
    """The ranks vLLM's `/kv_event_sources` answer lists; ValueError when it is no JSON object.

    Entries that are not a rank number with a usable ZMQ endpoint are left out (a rank without its own entry is not
    guessed: the engine said what it runs)."""
    if not isinstance(answer, dict):
        raise ValueError("kv_event_sources is not an object")
    host = _host(endpoint)
    plan: Plan = {0: RankEndpoints(endpoint, replay)}
    for key, config in answer.items():
        rank = int(key) if isinstance(key, str) and key.isdigit() else key if type(key) is int else None
        if rank is None or not 0 <= rank < MAX_KV_RANKS or not isinstance(config, dict):
            continue
        if config.get("enable_kv_cache_events") is False or config.get("publisher", "zmq") != "zmq":
            continue
        offered_replay = _reachable(config.get("replay_endpoint"), host)
        if rank == 0:
            plan[0] = RankEndpoints(endpoint, replay or offered_replay)
            continue
        publisher = _reachable(config.get("endpoint"), host)
        if publisher is not None:
            plan[rank] = RankEndpoints(publisher, offered_replay)
    return plan


def _host(endpoint: str) -> str | None:
    """The host of a tcp endpoint (None for ipc)."""
    if not endpoint.startswith("tcp://"):
        return None
    return endpoint[len("tcp://") :].rpartition(":")[0]


def _reachable(offered: object, host: str | None) -> str | None:
    """An endpoint the engine offers, as this side connects to it: a bind wildcard is the engine's host."""
    if not isinstance(offered, str) or not re.fullmatch(ZMQ_ENDPOINT, offered):
        return None
    offered_host = _host(offered)
    if offered_host in _WILDCARDS and host is not None:
        return f"tcp://{host}:{offered.rpartition(':')[2]}"
    return offered
