"""vLLM's own KV-event publishers for N data-parallel ranks, and vLLM's own `/kv_event_sources` route: run by the
vLLM venv's python (`python tests/e2e/vllm_kv_ranks.py ...`), steered over stdin.

Each rank's publisher is made the way vLLM's scheduler makes it (`EventPublisherFactory.create(kv_events_config,
data_parallel_rank)`), so ports, replay sockets, the wire format and the rank stamp are vLLM's. The HTTP side is
vLLM's own router (`vllm.entrypoints.serve.instrumentator.basic`) with the one stand-in an engine-less process
needs: the engine client, which answers `get_kv_event_sources()` with each publisher's resolved config, as vLLM's
front end does with the configs its engines report at their handshake. With `--no-route` the app serves nothing
(an engine without the route: older vLLM, SGLang).

stdin, one JSON object a line: {"rank": r, "events": [{"type": "BlockStored", <vLLM's field names>...}, ...]}
publishes one `KVEventBatch` from rank r; {"rank": r, "tick": true} publishes an empty batch (lets a subscriber
that joined late notice the stream and ask for the replay). Each line is answered with "ok" on stdout. The first
line on stdout is "ready <port>".
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

# Only the vLLM venv has these (outrider's own venv, where mypy runs, does not).
import uvicorn  # type: ignore[import-not-found,unused-ignore]
from fastapi import FastAPI  # type: ignore[import-not-found,unused-ignore]
from vllm.config.kv_events import KVEventsConfig  # type: ignore[import-not-found,unused-ignore]
from vllm.distributed.kv_events import (  # type: ignore[import-not-found,unused-ignore]
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventPublisher,
    EventPublisherFactory,
    KVEventBatch,
)
from vllm.entrypoints.serve.instrumentator.basic import router  # type: ignore[import-not-found,unused-ignore]

EVENTS = {"BlockStored": BlockStored, "BlockRemoved": BlockRemoved, "AllBlocksCleared": AllBlocksCleared}


class EngineClient:
    """What vLLM's route reads of the engine client: the publisher config of every rank."""

    def __init__(self, publishers: dict[int, EventPublisher]) -> None:
        self.publishers = publishers

    def get_kv_event_sources(self) -> dict[int, KVEventsConfig | None]:
        return {rank: pub.get_publisher_config() for rank, pub in self.publishers.items()}


def event(spec: dict[str, Any]) -> Any:
    fields = dict(spec)
    kind = EVENTS[fields.pop("type")]
    if kind is BlockStored:
        fields = {"lora_id": None, "medium": "GPU", "lora_name": None, **fields}
    elif kind is BlockRemoved:
        fields = {"medium": "GPU", **fields}
    return kind(**fields)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--replay-endpoint", required=True)
    parser.add_argument("--topic", default="kv-events")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--no-route", action="store_true")
    args = parser.parse_args()

    config = KVEventsConfig(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint=args.endpoint,
        replay_endpoint=args.replay_endpoint,
        topic=args.topic,
    )
    publishers = {rank: EventPublisherFactory.create(config, data_parallel_rank=rank) for rank in range(args.ranks)}
    app = FastAPI()
    if not args.no_route:
        app.include_router(router)
    app.state.engine_client = EngineClient(publishers)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.http_port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    print(f"ready {args.http_port}", flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        events = [] if command.get("tick") else [event(e) for e in command["events"]]
        publishers[command["rank"]].publish(KVEventBatch(ts=time.time(), events=events))
        print("ok", flush=True)
    for pub in publishers.values():
        pub.shutdown()
    server.should_exit = True


if __name__ == "__main__":
    main()
