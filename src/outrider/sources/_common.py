"""Helpers every store shares: path and range checks, piece re-chunking, scrubbing secrets, timeouts.

What only bucket stores share (keys under a prefix, the S3 dialect's error codes) is in `sources.bucket`.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from outrider.backoff import STORE_RETRIES, StoreRetries
from outrider.errors import InvalidRequest, SourceThrottled, SourceTransientError
from outrider.sources.base import PIECE_SIZE
from outrider.sources.options import SourceOptions

log = logging.getLogger("outrider.sources")
_R = TypeVar("_R")

# HTTP statuses a retry may fix besides 5xx: request timeout and throttling.
TRANSIENT_STATUSES = frozenset({408, 429})
# Statuses that mean "too many requests, slow down" (S3's SlowDown is a 503) rather than a failure.
THROTTLE_STATUSES = frozenset({429, 503})
# Extra connections beyond the worker count: listing and metadata calls run beside the ranged reads.
POOL_HEADROOM = 4
# Seconds to wait for a connection, and for bytes on an open one, before calling the attempt failed.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


def check_relative_path(path: str) -> str:
    """Refuse a path that could leave the source root once joined: absolute, '.', '..', empty parts, NUL."""
    if not path or path.startswith("/") or "\x00" in path or "\\" in path:
        raise InvalidRequest("file path must be relative, '/'-separated, without NUL or backslash", field="path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidRequest("file path must not contain empty, '.' or '..' parts", field="path")
    return path


def check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise InvalidRequest(f"invalid byte range [{start}, {end})", field="range")


def repieced(chunks: Iterable[bytes], expected: int, display: str, path: str) -> Iterator[bytes]:
    """Yield `chunks` re-cut to at most PIECE_SIZE, stopping at `expected` bytes; a short body is transient."""
    got = 0
    for chunk in chunks:
        if not chunk:
            continue
        room = expected - got
        if len(chunk) > room:
            chunk = chunk[:room]
        for offset in range(0, len(chunk), PIECE_SIZE):
            piece = chunk[offset : offset + PIECE_SIZE]
            got += len(piece)
            yield piece
        if got >= expected:
            return
    if got < expected:
        raise SourceTransientError(f"{display}: {path}: body ended after {got} of {expected} bytes")


def retry_after_seconds(value: object, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds (RFC 9110: delta-seconds or an HTTP date), or None when absent or
    unreadable. A date in the past is no wait at all."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def secrets_of(options: SourceOptions) -> tuple[str, ...]:
    values = (options.secret_key, options.session_token, options.hf_token, options.ms_token, options.access_key)
    return tuple(v for v in values if v)


def scrub(message: str, secrets: Iterable[str]) -> str:
    """Defense in depth: an SDK message should never hold a credential, but if one does it is masked here."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def retried(call: Callable[[], _R], closing: threading.Event, policy: StoreRetries | None = None) -> _R:
    """`call()` (a listing page, a HEAD, a metadata request: blocking, in a thread), retried after a
    SourceTransientError with the chunk reads' policy (`StoreRetries`: backoff with jitter, at least a throttled
    answer's Retry-After; default `STORE_RETRIES`); the last failure is raised as it is once `policy.attempts`
    failed in a row. The SDKs' own retries are off, so this is the only retry such a request gets. The wait ends
    early when `closing` is set (the source was closed: its caller has gone), and the failure is raised then."""
    policy = policy or STORE_RETRIES
    failures = 0
    while True:
        try:
            return call()
        except SourceTransientError as exc:
            failures += 1
            if failures >= policy.attempts:
                log.info("%s; giving up after %d tries", exc.message, failures)
                raise
            wait = policy.wait(failures, exc.retry_after if isinstance(exc, SourceThrottled) else None)
            log.info("%s; retrying in %.2fs", exc.message, wait)
            if closing.wait(wait):
                raise
