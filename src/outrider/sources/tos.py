"""`tos://bucket/prefix` through Volcengine's `tos` SDK (`tos.TosClientV2`).

Addressing: the SDK only addresses buckets virtual-host style (`bucket.endpoint-host`). An IP or `localhost`
endpoint cannot carry a bucket label, so for those the client runs with `is_custom_domain=True`: the endpoint
itself stands for the bucket, as a TOS custom domain bound to one bucket does, and the bucket named in the URI is
not sent on the wire (it still names the source in messages and records).

Checksums: TOS reports CRC64-ECMA (`HashCrc64ecma` in listings, a decimal string), offered as `crc64ecma`.
The SDK's own retries are off (`max_retry_count=0`) and so is its CRC check of whole-object reads: the transfer
engine retries per chunk and verifies whole files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

import tos
from tos.exceptions import TosClientError, TosServerError

from outrider.errors import InvalidSource, SourceError, SourceNotFound, SourceTransientError
from outrider.sources._common import (
    CONNECT_TIMEOUT,
    POOL_HEADROOM,
    READ_TIMEOUT,
    check_range,
    is_local_host,
    key_for,
    list_prefix,
    relative_key,
    repieced,
    scrub,
    secrets_of,
    store_error,
)
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

_LIST_PAGE = 1000


class TosSource(Source):
    """A bucket prefix on Volcengine TOS."""

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        if not options.endpoint:
            raise InvalidSource("tos:// needs an endpoint: set config.endpoint or TOS_ENDPOINT", field="config")
        if not options.region:
            raise InvalidSource("tos:// needs a region: set config.region or TOS_REGION", field="config")
        self.display = ref.display
        self._bucket = ref.bucket
        self._prefix = ref.prefix
        self._secrets = secrets_of(options)
        self._client = tos.TosClientV2(
            ak=options.access_key or "",
            sk=options.secret_key or "",
            security_token=options.session_token if options.access_key else None,
            endpoint=options.endpoint,
            region=options.region,
            is_custom_domain=is_local_host(options.endpoint),
            max_retry_count=0,
            max_connections=max(1, max_workers) + POOL_HEADROOM,
            enable_crc=False,
            connection_time=int(CONNECT_TIMEOUT),
            socket_timeout=int(READ_TIMEOUT),
            dns_cache_time=0,  # no background DNS refresher thread per source
        )

    def _raise(self, exc: Exception, what: str) -> NoReturn:
        if isinstance(exc, SourceError):
            raise exc
        if isinstance(exc, TosServerError):
            status = int(exc.status_code or 0)
            code = exc.code or ""
            detail = scrub(f"{code or status}: {exc.message or 'no message'}", self._secrets)
            message = f"{self.display}: {what}: {detail}"
            raise store_error(message, code, status) from None
        if isinstance(exc, TosClientError):
            cause = exc.cause
            detail = scrub(f"{exc.message}: {cause}" if cause else str(exc.message), self._secrets)
            # Network failures arrive wrapped ("http request timeout" around a requests error, and requests'
            # errors are OSErrors); a short body as
            # "IO Content not equal content-length".
            if isinstance(cause, OSError) or "content-length" in str(exc.message):
                raise SourceTransientError(f"{self.display}: {what}: {detail}") from None
            raise SourceError(f"{self.display}: {what}: {detail}") from None
        if isinstance(exc, OSError):  # requests' errors are OSErrors
            raise SourceTransientError(f"{self.display}: {what}: {scrub(str(exc), self._secrets)}") from None
        raise SourceError(f"{self.display}: {what}: {type(exc).__name__}: {scrub(str(exc), self._secrets)}") from None

    def list_files(self) -> list[RemoteFile]:
        prefix = list_prefix(self._prefix)
        files: list[RemoteFile] = []
        token: str | None = None
        while True:
            try:
                page = self._client.list_objects_type2(
                    self._bucket, prefix=prefix or None, continuation_token=token, max_keys=_LIST_PAGE,
                    list_only_once=True,
                )  # fmt: skip
            except Exception as exc:
                self._raise(exc, "list")
            for obj in page.contents:
                rel = relative_key(prefix, obj.key, self.display)
                if rel is None:
                    continue
                crc = obj.hash_crc64_ecma
                checksum = Checksum("crc64ecma", str(crc)) if crc is not None else None
                etag = (obj.etag or "").strip('"') or None
                files.append(RemoteFile(rel, int(obj.size), checksum, etag))
            token = page.next_continuation_token
            if not page.is_truncated or not token:
                break
        if not files:
            raise SourceNotFound(f"{self.display}: no objects under this prefix")
        return files

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        if start == end:
            return
        key = key_for(self._prefix, path)
        what = f"read {path}"
        try:
            output = self._client.get_object(self._bucket, key, range_start=start, range_end=end - 1)
        except Exception as exc:
            self._raise(exc, what)
        try:
            pieces = iter(lambda: output.read(PIECE_SIZE), b"")
            yield from repieced(pieces, end - start, self.display, path)
        except Exception as exc:
            self._raise(exc, what)
        finally:
            _close_output(output)

    def close(self) -> None:
        self._client.close()


def _close_output(output: Any) -> None:
    """Release the HTTP connection under a GetObjectOutput (the SDK offers no close of its own)."""
    response = getattr(getattr(output, "resp", None), "resp", None)  # tos.http.Response -> requests.Response
    if response is not None:
        response.close()
