"""What the model hubs served over plain HTTP share (Hugging Face's resolve URLs, ModelScope's file API): one ranged
GET checked against the range asked for, and an error status mapped onto the source error tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn

import httpx

from outrider.errors import SourceAccessDenied, SourceError, SourceNotFound, SourceThrottled, SourceTransientError
from outrider.sources._common import THROTTLE_STATUSES, TRANSIENT_STATUSES, repieced, retry_after_seconds
from outrider.sources.base import PIECE_SIZE

#: Raises the source error for an error answer to `what` (never returns).
ErrorAnswer = Callable[[httpx.Response, str], NoReturn]


def raise_for_status(response: httpx.Response, message: str, *, denied: str = "") -> NoReturn:
    """The source error for an error answer; `message` already names the source, the action and what the hub
    said (scrubbed), `denied` is added to a 401/403's."""
    status = response.status_code
    if status in (401, 403):
        raise SourceAccessDenied(message + denied)
    if status == 404:
        raise SourceNotFound(message)
    if status in THROTTLE_STATUSES:
        raise SourceThrottled(message, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    if status >= 500 or status in TRANSIENT_STATUSES:
        raise SourceTransientError(message)
    raise SourceError(message)


def ranged_get(
    http: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    start: int,
    end: int,
    display: str,
    path: str,
    on_error: ErrorAnswer,
) -> Iterator[bytes]:
    """Bytes [start, end) of one file in pieces, from a GET with `Range` (and the bytes as stored: a transparently
    gzipped body would not match the offsets). `on_error(response, what)` raises for an error answer (its body
    read)."""
    what = f"read {path}"
    asked = {**headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    try:
        with http.stream("GET", url, params=params, headers=asked) as response:
            if response.status_code == 200 and start != 0:
                raise SourceError(f"{display}: {what}: the server ignored the Range header")
            if response.status_code == 206:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {start}-"):
                    raise SourceError(f"{display}: {what}: unexpected Content-Range {content_range!r}")
            elif response.status_code != 200:
                response.read()
                on_error(response, what)
            yield from repieced(response.iter_raw(PIECE_SIZE), end - start, display, path)
    except SourceError:
        raise
    except httpx.TransportError as exc:
        raise SourceTransientError(f"{display}: {what}: {type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"{display}: {what}: {type(exc).__name__}: {exc}") from None
