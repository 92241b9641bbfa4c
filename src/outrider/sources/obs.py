"""`obs://bucket/prefix` through Huawei Cloud's esdk-obs-python (`from obs import ObsClient`).

Addressing and signing:
- A named endpoint (obs.<region>.myhuaweicloud.com): the SDK's own behaviour, virtual-host addressing with its
  OBS/AWS signature negotiation.
- An IP or `localhost` endpoint (in-cluster gateways, tests): path-style, because a bucket cannot be a DNS label
  of an IP. The SDK would sign those with AWS V2; this module asks for SigV4 instead and sends `x-amz-date`, the
  SigV4 timestamp header botocore sends, because the SDK's V4 signer otherwise dates the request only with the
  HTTP `Date` header, which SigV4 allows but moto's verifier (and some gateways) do not accept.

Unlike boto3, the SDK answers an HTTP error with a result object (status, errorCode, errorMessage) rather than
raising; this module raises it (`_ErrorAnswer`) so that it is classified as every store's failures are. Transport
failures do raise (OSError, http.client errors, or a bare Exception for a short body). The SDK's own retries are
off (`max_retry_count=0`): the transfer engine retries per chunk.

Connections: one per request (see the constructor); a chunk is many MiB, so the handshake is a small cost.

Checksums: a single-part object's ETag is its MD5, as on S3, except for an object encrypted on the server (SSE-KMS,
SSE-OBS or SSE-C: OBS's documentation says any server-side encryption). The listing does not show encryption, so
one metadata request (HEAD) per object with an MD5-shaped ETag asks before the MD5 is trusted.
"""

from __future__ import annotations

import datetime
import http.client
from typing import Any

from obs import GetObjectHeader, ObsClient

from outrider.errors import InvalidSource
from outrider.sources._common import READ_TIMEOUT
from outrider.sources.base import Checksum, RemoteFile
from outrider.sources.bucket import BucketSource, Failure, Listed, Page, RangeBody, is_local_host, md5_from_etag
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

DEFAULT_REGION = "region"  # the SDK's own default; V4 scopes need a value, OBS ignores it for path-style
_LIST_PAGE = 1000


class _ErrorAnswer(Exception):
    """An error answer from OBS. The SDK returns these as results; raising them sends them the way every other
    failure goes (`ObsSource._failure`)."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.errorCode or result.status)
        self.result = result


def _answered(result: Any) -> Any:
    """`result` if the store answered with success, else raise it."""
    if int(result.status or 0) >= 300:
        raise _ErrorAnswer(result)
    return result


class ObsSource(BucketSource):
    """A bucket prefix on Huawei Cloud OBS (or an S3-compatible store spoken to with the OBS SDK)."""

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        if not options.endpoint:
            raise InvalidSource("obs:// needs an endpoint: set config.endpoint or ENDPOINT", field="config")
        super().__init__(ref, options)
        self._v4 = is_local_host(options.endpoint)
        kwargs: dict[str, Any] = {}
        if self._v4:
            kwargs.update(path_style=True, signature="v4")
        self._client = ObsClient(
            access_key_id=options.access_key or "",
            secret_access_key=options.secret_key or "",
            security_token=options.session_token if options.access_key else None,
            server=options.endpoint,
            region=options.region or DEFAULT_REGION,
            max_retry_count=0,
            timeout=int(READ_TIMEOUT),
            # One connection per request: the SDK's pooled mode (long_conn_mode) hands a connection back to its
            # pool even when a cancelled read left its body half-read, and the next request on it would fail.
            long_conn_mode=False,
            **kwargs,
        )

    def _headers(self) -> dict[str, str] | None:
        if not self._v4:
            return None
        # A fresh timestamp per request: SigV4 refuses requests dated more than 15 minutes away.
        return {"x-amz-date": datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")}

    def _list_page(self, prefix: str, cursor: str | None) -> Page:
        headers = self._headers()
        listing = self._client.listObjects(
            self._bucket, prefix=prefix or None, marker=cursor, max_keys=_LIST_PAGE, extensionHeaders=headers
        )
        body = _answered(listing).body
        contents = body.contents or []
        objects: list[Listed] = []
        for obj in contents:
            etag = (obj.etag or "").strip('"') or None
            md5 = md5_from_etag(etag)
            # An MD5-shaped ETag is no MD5 if the object is encrypted: a metadata request tells (_head_checksum).
            objects.append(Listed(obj.key, int(obj.size), md5, etag, ask=md5 is not None))
        more = body.is_truncated and contents
        return Page(objects, (body.next_marker or contents[-1].key) if more else None)

    def _head_checksum(self, key: str, listed: RemoteFile) -> Checksum | None:
        result = _answered(self._client.getObjectMetadata(self._bucket, key, extensionHeaders=self._headers()))
        encrypted = result.body.sseKms or result.body.sseC
        return None if encrypted else listed.checksum

    def _open_range(self, key: str, start: int, end: int) -> RangeBody:
        headers = GetObjectHeader(range=f"{start}-{end - 1}")
        result = self._client.getObject(self._bucket, key, headers=headers, extensionHeaders=self._headers())
        body: RangeBody = _answered(result).body.response
        return body

    def _failure(self, exc: Exception) -> Failure | None:
        if isinstance(exc, _ErrorAnswer):
            result = exc.result
            return Failure.answer(result.errorCode or "", int(result.status or 0), result.errorMessage or result.reason)
        if isinstance(exc, OSError | http.client.HTTPException) or type(exc) is Exception:
            # The SDK raises a bare Exception for a body cut short ("premature end of Content-Length...").
            return Failure.transient(str(exc))
        return None

    def close(self) -> None:
        super().close()
        self._client.close()
