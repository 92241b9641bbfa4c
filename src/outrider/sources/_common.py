"""Helpers every store shares: key <-> path mapping, range checks, piece re-chunking, scrubbing secrets."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit

from outrider.errors import (
    InvalidRequest,
    SourceAccessDenied,
    SourceError,
    SourceNotFound,
    SourceTransientError,
)
from outrider.sources.base import PIECE_SIZE
from outrider.sources.options import SourceOptions

# HTTP statuses a retry may fix besides 5xx: request timeout and throttling.
TRANSIENT_STATUSES = frozenset({408, 429})
# Error codes the S3 dialect shares (S3, OBS and TOS all answer with these).
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"})
# Extra connections beyond the worker count: listing and metadata calls run beside the ranged reads.
POOL_HEADROOM = 4
# Seconds to wait for a connection, and for bytes on an open one, before calling the attempt failed.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# Metadata requests in flight at once while listing: a tree has a handful of files, a bucket may have thousands.
HEAD_THREADS = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


def check_relative_path(path: str) -> str:
    """Refuse a path that could leave the source root once joined: absolute, '.', '..', empty parts, NUL."""
    if not path or path.startswith("/") or "\x00" in path or "\\" in path:
        raise InvalidRequest("file path must be relative, '/'-separated, without NUL or backslash", field="path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidRequest("file path must not contain empty, '.' or '..' parts", field="path")
    return path


def key_for(prefix: str, path: str) -> str:
    """The object key of `path` under `prefix` (which has no leading or trailing '/')."""
    check_relative_path(path)
    return f"{prefix}/{path}" if prefix else path


def list_prefix(prefix: str) -> str:
    """The listing prefix for a directory-like source: `prefix/`, or '' for the whole bucket."""
    return f"{prefix}/" if prefix else ""


def relative_key(listing_prefix: str, key: str, display: str) -> str | None:
    """`key` relative to the listing prefix; None for a directory marker. Refuses keys that would escape."""
    rel = key[len(listing_prefix) :]
    if not rel or rel.endswith("/"):
        return None  # a "folder" placeholder object, not a file
    if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")) or "\x00" in rel:
        raise SourceError(f"{display}: object key {key!r} has empty, '.' or '..' parts; refusing to download it")
    return rel


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


def is_local_host(endpoint: str | None) -> bool:
    """True for an IP literal or localhost: such endpoints cannot take a bucket as a DNS label."""
    if not endpoint:
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def secrets_of(options: SourceOptions) -> tuple[str, ...]:
    values = (options.secret_key, options.session_token, options.hf_token, options.access_key)
    return tuple(v for v in values if v)


def scrub(message: str, secrets: Iterable[str]) -> str:
    """Defense in depth: an SDK message should never hold a credential, but if one does it is masked here."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def store_error(
    message: str,
    code: str,
    status: int,
    *,
    denied: frozenset[str] = DENIED_CODES,
    not_found: frozenset[str] = NOT_FOUND_CODES,
    transient: frozenset[str] = frozenset(),
) -> SourceError:
    """The source error for a store's answer: its error code first, then its HTTP status."""
    if code in denied or status in (401, 403):
        return SourceAccessDenied(message)
    if code in not_found or status == 404:
        return SourceNotFound(message)
    if status >= 500 or status in TRANSIENT_STATUSES or code in transient:
        return SourceTransientError(message)
    return SourceError(message)


def per_file(ask: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """`ask` for each item (a metadata request per listed file), HEAD_THREADS at a time; answers in order."""
    if not items:
        return []
    with ThreadPoolExecutor(min(HEAD_THREADS, len(items))) as pool:
        return list(pool.map(ask, items))
