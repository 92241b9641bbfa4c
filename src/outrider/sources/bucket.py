"""What every bucket store shares (S3, OBS, TOS, and any store that lists keys and serves ranged GETs).

`BucketSource` holds the walk through a listing's pages, the key <-> path mapping under the prefix, the metadata
requests that confirm a listed checksum, ranged reads cut into pieces, and the mapping of every failure onto the
source error tree. A subclass speaks one SDK and nothing else; see `BucketSource` for the calls it implements.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import ipaddress
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, NoReturn, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

from outrider.errors import SourceAccessDenied, SourceError, SourceNotFound, SourceThrottled, SourceTransientError
from outrider.sources._common import (
    THROTTLE_STATUSES,
    TRANSIENT_STATUSES,
    check_range,
    check_relative_path,
    repieced,
    retried,
    scrub,
    secrets_of,
)
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

# Error codes the S3 dialect shares (S3, OBS and TOS all answer with these).
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound"})
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"})
# Codes that ask the client to slow down (S3, OBS and TOS spellings, and AWS's generic ones).
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestThrottled"}
)
# Metadata requests in flight at once while listing: a tree has a handful of files, a bucket may have thousands.
HEAD_THREADS = 8

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")


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


def md5_from_etag(etag: str | None) -> Checksum | None:
    """The MD5 a single-part ETag carries, else None (multipart ETags end in '-N')."""
    if not etag:
        return None
    value = etag.strip('"').lower()
    return Checksum("md5", value) if _MD5_ETAG.match(value) else None


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


def store_error(
    message: str,
    code: str,
    status: int,
    *,
    denied: frozenset[str] = DENIED_CODES,
    not_found: frozenset[str] = NOT_FOUND_CODES,
    transient: frozenset[str] = frozenset(),
    retry_after: float | None = None,
) -> SourceError:
    """The source error for a store's answer: its error code first, then its HTTP status. A throttling answer (a
    slow-down code, 429/503, or any transient answer naming a Retry-After) is `SourceThrottled`, with that wait."""
    if code in denied or status in (401, 403):
        return SourceAccessDenied(message)
    if code in not_found or status == 404:
        return SourceNotFound(message)
    if code in THROTTLE_CODES or status in THROTTLE_STATUSES:
        return SourceThrottled(message, retry_after=retry_after)
    if status >= 500 or status in TRANSIENT_STATUSES or code in transient:
        if retry_after is not None:
            return SourceThrottled(message, retry_after=retry_after)
        return SourceTransientError(message)
    return SourceError(message)


def per_file(ask: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """`ask` for each item (a metadata request per listed file), HEAD_THREADS at a time; answers in order."""
    if not items:
        return []
    with ThreadPoolExecutor(min(HEAD_THREADS, len(items))) as pool:
        return list(pool.map(ask, items))


@dataclasses.dataclass(frozen=True)
class Listed:
    """One object of a listing page, as the store named it. `ask`: a metadata request may tell more about its
    checksum (`BucketSource._head_checksum` is called for it)."""

    key: str
    size: int
    checksum: Checksum | None = None
    version: str | None = None
    ask: bool = False


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a listing; `cursor` is what asks for the next one (a marker or a token), None after the last."""

    objects: list[Listed]
    cursor: str | None


@dataclasses.dataclass(frozen=True)
class Failure:
    """What an SDK exception says, in the terms `BucketSource` maps onto the source error tree.

    With a `code` or a `status` the store answered, and those pick the error (`store_error`, with the class's code
    sets). With neither, the request never got an answer, and `error` is the class to raise.
    """

    detail: str  # the store's own words; credentials are masked before it reaches a message
    code: str = ""
    status: int = 0
    error: type[SourceError] = SourceError
    retry_after: float | None = None  # seconds, from the answer's Retry-After header

    @classmethod
    def answer(cls, code: str, status: int, message: str | None, retry_after: float | None = None) -> Failure:
        """The store's error answer: its error code (or status), message and Retry-After, if any."""
        return cls(f"{code or status}: {message or 'no message'}", code, status, retry_after=retry_after)

    @classmethod
    def transient(cls, detail: str) -> Failure:
        """A transport failure (refused, reset, timed out, a body cut short): a retry may fix it."""
        return cls(detail, error=SourceTransientError)


class RangeBody(Protocol):
    """The open body of a ranged GET."""

    def read(self, size: int, /) -> bytes:
        """Up to `size` bytes; b'' at the end."""

    def close(self) -> None:
        """Release the connection, even with the body half-read."""


class BucketSource(Source):
    """A prefix in a bucket; a subclass speaks one store's SDK.

    A subclass implements, each blocking and safe to call from several threads at once:
    - `_list_page(prefix, cursor)`: one page of the keys under `prefix` ('' for the whole bucket), from `cursor`
      (None for the first page);
    - `_open_range(key, start, end)`: a GET of bytes [start, end) of `key`, end exclusive;
    - `_failure(exc)`: what one of its SDK's exceptions says, or None for one it does not know;
    - `_head_checksum(key, listed)` if its listings mark objects to `ask` about;
    - `close()`.
    Its calls may raise whatever the SDK raises: every exception goes through `_failure`. Code sets wider than the
    S3 dialect's go in `denied_codes`, `not_found_codes` and `transient_codes`.
    """

    denied_codes: ClassVar[frozenset[str]] = DENIED_CODES
    not_found_codes: ClassVar[frozenset[str]] = NOT_FOUND_CODES
    transient_codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, ref: BucketRef, options: SourceOptions) -> None:
        self.display = ref.display
        self._bucket = ref.bucket
        self._prefix = ref.prefix
        self._secrets = secrets_of(options)
        self._quiet = options.request_endpoint
        self._closing = threading.Event()  # set by close(): a listing's retry waits end

    # -- the SDK calls a store implements ---------------------------------------------------------------------

    @abc.abstractmethod
    def _list_page(self, prefix: str, cursor: str | None) -> Page: ...

    @abc.abstractmethod
    def _open_range(self, key: str, start: int, end: int) -> RangeBody: ...

    @abc.abstractmethod
    def _failure(self, exc: Exception) -> Failure | None: ...

    def _head_checksum(self, key: str, listed: RemoteFile) -> Checksum | None:
        """The checksum to trust for a listed object marked `ask`, after asking the store about it."""
        return listed.checksum  # a store whose listing says all there is marks nothing to ask about

    # -- the Source interface ---------------------------------------------------------------------------------

    def list_files(self) -> list[RemoteFile]:
        prefix = list_prefix(self._prefix)
        files: list[RemoteFile] = []
        ask: list[int] = []  # indexes into files
        cursor: str | None = None
        while True:
            page = retried(functools.partial(self._call, "list", self._list_page, prefix, cursor), self._closing)
            for obj in page.objects:
                rel = relative_key(prefix, obj.key, self.display)
                if rel is None:
                    continue
                if obj.ask:
                    ask.append(len(files))
                files.append(RemoteFile(rel, obj.size, obj.checksum, obj.version))
            if page.cursor is None:
                break
            if page.cursor == cursor:  # a store that hands back the page it was asked for would loop forever
                raise SourceError(f"{self.display}: list: the store returned the same page cursor twice")
            cursor = page.cursor
        if not files:
            raise SourceNotFound(f"{self.display}: no objects under this prefix")
        found = per_file(self._confirmed_checksum, [files[i] for i in ask])
        for index, checksum in zip(ask, found, strict=True):
            files[index] = dataclasses.replace(files[index], checksum=checksum)
        return files

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        if start == end:
            return
        what = f"read {path}"
        body = self._call(what, self._open_range, key_for(self._prefix, path), start, end)
        try:
            yield from repieced(iter(lambda: body.read(PIECE_SIZE), b""), end - start, self.display, path)
        except Exception as exc:
            self._raise(exc, what)
        finally:
            body.close()

    def close(self) -> None:
        """Ends any retry wait of a listing or HEAD in flight; a subclass then closes its SDK client."""
        self._closing.set()

    # -- shared machinery -------------------------------------------------------------------------------------

    def _confirmed_checksum(self, listed: RemoteFile) -> Checksum | None:
        try:
            head = functools.partial(
                self._call, f"head {listed.path}", self._head_checksum, key_for(self._prefix, listed.path), listed
            )
            return retried(head, self._closing)
        except (SourceAccessDenied, SourceNotFound):
            # Not allowed to ask, or gone since the listing: the read will say so, in the job. Until then, what
            # the listing gave stands.
            return listed.checksum

    def _call(self, what: str, call: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """`call(*args, **kwargs)`, with any failure raised as a SourceError about `what`."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            self._raise(exc, what)

    def _raise(self, exc: Exception, what: str) -> NoReturn:
        """Raise `exc` as a SourceError that keeps the store's own words and drops credentials."""
        if isinstance(exc, SourceError):
            raise exc
        failure = self._failure(exc) or Failure(f"{type(exc).__name__}: {exc}")
        message = f"{self.display}: {what}: {scrub(failure.detail, self._secrets)}"
        if (failure.code or failure.status) and self._quiet:
            # An endpoint the request named may be any service the pod reaches: its answer is not relayed.
            message = f"{self.display}: {what}: {failure.status or 'an error'} from the endpoint the request named"
        if failure.code or failure.status:
            raise store_error(
                message,
                failure.code,
                failure.status,
                denied=self.denied_codes,
                not_found=self.not_found_codes,
                transient=self.transient_codes,
                retry_after=failure.retry_after,
            ) from None
        raise failure.error(message) from None
