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

from typing import Any

import tos
from tos.exceptions import TosClientError, TosServerError

from outrider.errors import InvalidSource
from outrider.sources._common import CONNECT_TIMEOUT, POOL_HEADROOM, READ_TIMEOUT
from outrider.sources.base import Checksum
from outrider.sources.bucket import BucketSource, Failure, Listed, Page, RangeBody, is_local_host
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

_LIST_PAGE = 1000


class TosSource(BucketSource):
    """A bucket prefix on Volcengine TOS."""

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        if not options.endpoint:
            raise InvalidSource("tos:// needs an endpoint: set config.endpoint or TOS_ENDPOINT", field="config")
        if not options.region:
            raise InvalidSource("tos:// needs a region: set config.region or TOS_REGION", field="config")
        super().__init__(ref, options)
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

    def _list_page(self, prefix: str, cursor: str | None) -> Page:
        page = self._client.list_objects_type2(
            self._bucket, prefix=prefix or None, continuation_token=cursor, max_keys=_LIST_PAGE, list_only_once=True
        )
        objects: list[Listed] = []
        for obj in page.contents:
            crc = obj.hash_crc64_ecma
            checksum = Checksum("crc64ecma", str(crc)) if crc is not None else None
            etag = (obj.etag or "").strip('"') or None
            objects.append(Listed(obj.key, int(obj.size), checksum, etag))
        token = page.next_continuation_token
        return Page(objects, token if page.is_truncated and token else None)

    def _open_range(self, key: str, start: int, end: int) -> RangeBody:
        return _Body(self._client.get_object(self._bucket, key, range_start=start, range_end=end - 1))

    def _failure(self, exc: Exception) -> Failure | None:
        if isinstance(exc, TosServerError):
            return Failure.answer(exc.code or "", int(exc.status_code or 0), exc.message)
        if isinstance(exc, TosClientError):
            cause = exc.cause
            detail = f"{exc.message}: {cause}" if cause else str(exc.message)
            # Network failures arrive wrapped ("http request timeout" around a requests error, and requests'
            # errors are OSErrors); a short body as "IO Content not equal content-length".
            if isinstance(cause, OSError) or "content-length" in str(exc.message):
                return Failure.transient(detail)
            return Failure(detail)
        if isinstance(exc, OSError):  # requests' errors are OSErrors
            return Failure.transient(str(exc))
        return None

    def close(self) -> None:
        super().close()
        self._client.close()


class _Body:
    """A GetObjectOutput as a RangeBody: the SDK offers no close of its own."""

    def __init__(self, output: Any) -> None:
        self._output = output

    def read(self, size: int, /) -> bytes:
        data: bytes = self._output.read(size)
        return data

    def close(self) -> None:
        """Release the HTTP connection under the output."""
        response = getattr(getattr(self._output, "resp", None), "resp", None)  # tos.http.Response -> requests.Response
        if response is not None:
            response.close()
