"""A local KV-event publisher speaking vLLM's wire protocol, for tests and the benchmark.

Faithful to vLLM's ZmqEventPublisher (vllm/distributed/kv_events.py) where the subscriber can tell: multipart
`[topic, seq (8-byte big-endian), msgpack batch]` on a PUB-compatible socket, and a ROUTER replay socket answering
`[b"", start_seq]` with `[b"", topic, seq, payload]` for every buffered batch from start_seq on, then
`[b"", b"", -1 (8 bytes, signed), b""]`. Differences, all invisible to a subscriber:
- the publishing socket is XPUB, not PUB, so that a test can wait until the subscription has arrived instead of
  losing its first messages to ZMQ's "slow joiner" effect (XPUB sends exactly what PUB sends);
- `publish` can send any sequence number and raw payload, so that tests can make gaps, duplicates and garbage;
- events can be encoded as maps (vLLM 0.32+) or tagged arrays (vLLM <= 0.20, SGLang <= 0.5.15).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgpack
import zmq

END_SEQ = (-1).to_bytes(8, "big", signed=True)


def stored(hashes: list[int], parent: int | None, tokens: list[int], block_size: int, fmt: str = "map") -> Any:
    if fmt == "map":
        return {
            "type": "BlockStored",
            "block_hashes": hashes,
            "parent_block_hash": parent,
            "token_ids": tokens,
            "block_size": block_size,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": None,
            "extra_keys": None,
            "group_idx": 0,
        }
    return ["BlockStored", hashes, parent, tokens, block_size, None, "GPU"]


def removed(hashes: list[int], fmt: str = "map") -> Any:
    if fmt == "map":
        return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU", "group_idx": 0}
    return ["BlockRemoved", hashes, "GPU"]


def cleared(fmt: str = "map") -> Any:
    return {"type": "AllBlocksCleared"} if fmt == "map" else ["AllBlocksCleared"]


def batch(events: list[Any], ts: float | None = None, rank: int = 0) -> bytes:
    return bytes(msgpack.packb([time.time() if ts is None else ts, events, rank]))


class KvPublisher:
    def __init__(self, topic: str = "kv-events", *, replay: bool = True) -> None:
        self.topic = topic.encode()
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, 0)
        port = self._pub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.buffer: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self.next_seq = 0
        self.replay_endpoint: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if replay:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            rport = self._router.bind_to_random_port("tcp://127.0.0.1")
            self.replay_endpoint = f"tcp://127.0.0.1:{rport}"
            self._thread = threading.Thread(target=self._serve_replay, daemon=True)
            self._thread.start()

    def wait_for_subscriber(self, timeout: float = 10.0) -> None:
        if not self._pub.poll(int(timeout * 1000)):
            raise TimeoutError("no subscriber arrived")
        self._pub.recv()  # the subscription message

    def publish(self, payload: bytes, *, seq: int | None = None, send: bool = True, buffer: bool = True) -> int:
        """Send one batch. `send=False` only buffers it (a message lost on the way, still replayable)."""
        if seq is None:
            seq = self.next_seq
        self.next_seq = seq + 1
        if buffer:
            with self._lock:
                self.buffer.append((seq, payload))
        if send:
            self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    def _serve_replay(self) -> None:
        while not self._stop.is_set():
            if not self._router.poll(50):
                continue
            frames = self._router.recv_multipart()
            if len(frames) != 3:
                continue
            client, _, start_bytes = frames
            start = int.from_bytes(start_bytes, "big")
            with self._lock:
                todo = [(s, p) for s, p in self.buffer if s >= start]
            for s, p in todo:
                self._router.send_multipart([client, b"", self.topic, s.to_bytes(8, "big"), p])
            self._router.send_multipart([client, b"", b"", END_SEQ, b""])

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._ctx.destroy(linger=0)
