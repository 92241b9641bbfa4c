"""Writing this pod's advertisement to Redis, in the layout the Kthena router reads.

Per router key (`matrix:kv:block:{model}@{chunk}`, a Redis hash) this pod owns one field: its identifier, with the
unix time in seconds when the block was stored as value. Deletes touch only this pod's field; other pods' fields in
the same hash are never read or written.

Why redis-py's synchronous client in a worker thread rather than an async client: redis-py's asyncio client does not
run on trio, and a hand-written RESP client would have to re-implement what redis-py already gets right (AUTH with
user and password, SELECT, TLS for `rediss://`, URL parsing, reconnects). All writes come from one task, one
pipeline at a time, so the thread cost is one hop per pipelined batch of up to `PIPELINE_COMMANDS` commands, not
one per command; every call here blocks and must run through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from outrider.kvevents.hashing import KEY_PREFIX, redis_key
from outrider.kvevents.index import AdKey

# Commands per round trip: large enough to amortise the round trip, small enough to keep one reply in a few kB.
PIPELINE_COMMANDS = 1000
# SCAN's COUNT hint: keys examined per call while looking for this pod's fields.
SCAN_COUNT = 1000


class RedisWriter:
    """Blocking writer for one pod's fields. Raises `redis.RedisError` (or OSError) when Redis fails."""

    def __init__(self, url: str, pod: str, *, timeout: float = 2.0) -> None:
        self.pod = pod
        # No automatic retries: the caller owns failures (counts them, backs off, resyncs when Redis is back).
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    def close(self) -> None:
        self._client.close()

    def apply(self, model: str, changes: Mapping[AdKey, int | None]) -> None:
        """Write changes: a timestamp sets this pod's field on the key, None deletes it."""
        self._run(
            ("HSET", redis_key(lora or model, chunk), self.pod, ts)
            if ts is not None
            else ("HDEL", redis_key(lora or model, chunk), self.pod)
            for (lora, chunk), ts in changes.items()
        )

    def resync(self, model: str, wanted: Mapping[AdKey, int]) -> None:
        """Make Redis hold exactly `wanted` for this pod: delete its other fields (found with SCAN), set the rest."""
        keep = {redis_key(lora or model, chunk): ts for (lora, chunk), ts in wanted.items()}
        pending: list[tuple[object, ...]] = []
        # HDEL of an absent field is a no-op, so every scanned key can be sent blindly: one round trip per batch
        # instead of reading each hash first. SCAN (never KEYS) keeps Redis responsive on a large keyspace.
        for raw in self._client.scan_iter(match=_glob_escape(KEY_PREFIX) + "*", count=SCAN_COUNT):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key not in keep:
                pending.append(("HDEL", key, self.pod))
                if len(pending) >= PIPELINE_COMMANDS:
                    self._run(pending)
                    pending = []
        self._run(pending)
        self._run(("HSET", key, self.pod, ts) for key, ts in keep.items())

    def remove_all(self) -> None:
        """Delete every field this pod owns under the router's prefix."""
        self.resync("", {})

    def _run(self, commands: Iterable[tuple[object, ...]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for cmd in commands:
            pipe.execute_command(*cmd)  # type: ignore[no-untyped-call]
            n += 1
            if n >= PIPELINE_COMMANDS:
                pipe.execute()
                n = 0
        if n:
            pipe.execute()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
