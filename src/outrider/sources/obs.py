"""`obs://bucket/prefix` through Huawei Cloud's esdk-obs-python (`from obs import ObsClient`).

Addressing and signing:
- A named endpoint (obs.<region>.myhuaweicloud.com): the SDK's own behaviour, virtual-host addressing with its
  OBS/AWS signature negotiation.
- An IP or `localhost` endpoint (in-cluster gateways, tests): path-style, because a bucket cannot be a DNS label
  of an IP. The SDK would sign those with AWS V2; this module asks for SigV4 instead and sends `x-amz-date`, the
  SigV4 timestamp header botocore sends, because the SDK's V4 signer otherwise dates the request only with the
  HTTP `Date` header, which SigV4 allows but moto's verifier (and some gateways) do not accept.

Unlike boto3, the SDK answers an HTTP error with a result object (status, errorCode, errorMessage) rather than
raising; transport failures do raise (OSError, http.client errors, or a bare Exception for a short body). Its own
retries are off (`max_retry_count=0`): the transfer engine retries per chunk.

Connections: one per request (see the constructor); a chunk is many MiB, so the handshake is a small cost.

Checksums: a single-part object's ETag is its MD5, as on S3, except for an object encrypted on the server (SSE-KMS,
SSE-OBS or SSE-C: OBS's documentation says any server-side encryption). The listing does not show encryption, so
one metadata request (HEAD) per object with an MD5-shaped ETag asks before the MD5 is trusted.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
from collections.abc import Iterator
from typing import Any, NoReturn

from obs import GetObjectHeader, ObsClient

from outrider.errors import InvalidSource, SourceError, SourceNotFound, SourceTransientError
from outrider.sources._common import (
    READ_TIMEOUT,
    check_range,
    is_local_host,
    key_for,
    list_prefix,
    per_file,
    relative_key,
    repieced,
    scrub,
    secrets_of,
    store_error,
)
from outrider.sources.base import PIECE_SIZE, RemoteFile, Source
from outrider.sources.options import SourceOptions
from outrider.sources.s3 import md5_from_etag
from outrider.sources.uri import BucketRef

DEFAULT_REGION = "region"  # the SDK's own default; V4 scopes need a value, OBS ignores it for path-style
_LIST_PAGE = 1000


class ObsSource(Source):
    """A bucket prefix on Huawei Cloud OBS (or an S3-compatible store spoken to with the OBS SDK)."""

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        if not options.endpoint:
            raise InvalidSource("obs:// needs an endpoint: set config.endpoint or ENDPOINT", field="config")
        self.display = ref.display
        self._bucket = ref.bucket
        self._prefix = ref.prefix
        self._secrets = secrets_of(options)
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

    def _raise_for_result(self, result: Any, what: str) -> NoReturn:
        status = int(result.status or 0)
        code = result.errorCode or ""
        detail = scrub(f"{code or status}: {result.errorMessage or result.reason or 'no message'}", self._secrets)
        message = f"{self.display}: {what}: {detail}"
        raise store_error(message, code, status)

    def _raise_transport(self, exc: Exception, what: str) -> NoReturn:
        if isinstance(exc, SourceError):
            raise exc
        if isinstance(exc, OSError | http.client.HTTPException) or type(exc) is Exception:
            # The SDK raises a bare Exception for a body cut short ("premature end of Content-Length...").
            raise SourceTransientError(f"{self.display}: {what}: {scrub(str(exc), self._secrets)}") from None
        raise SourceError(f"{self.display}: {what}: {type(exc).__name__}: {scrub(str(exc), self._secrets)}") from None

    def list_files(self) -> list[RemoteFile]:
        prefix = list_prefix(self._prefix)
        files: list[RemoteFile] = []
        marker: str | None = None
        while True:
            try:
                result = self._client.listObjects(
                    self._bucket, prefix=prefix or None, marker=marker, max_keys=_LIST_PAGE,
                    extensionHeaders=self._headers(),
                )  # fmt: skip
            except Exception as exc:
                self._raise_transport(exc, "list")
            if int(result.status or 0) >= 300:
                self._raise_for_result(result, "list")
            body = result.body
            contents = body.contents or []
            for obj in contents:
                rel = relative_key(prefix, obj.key, self.display)
                if rel is None:
                    continue
                etag = (obj.etag or "").strip('"') or None
                files.append(RemoteFile(rel, int(obj.size), md5_from_etag(etag), etag))
            if not body.is_truncated or not contents:
                break
            marker = body.next_marker or contents[-1].key
        if not files:
            raise SourceNotFound(f"{self.display}: no objects under this prefix")
        ask = [i for i, remote in enumerate(files) if remote.checksum is not None]
        encrypted = per_file(self._encrypted, [files[i].path for i in ask])
        for index, yes in zip(ask, encrypted, strict=True):
            if yes:
                files[index] = dataclasses.replace(files[index], checksum=None)
        return files

    def _encrypted(self, path: str) -> bool:
        """Is the object encrypted on the server (so its ETag is no MD5)? False when we may not ask."""
        what = f"head {path}"
        try:
            result = self._client.getObjectMetadata(
                self._bucket, key_for(self._prefix, path), extensionHeaders=self._headers()
            )
        except Exception as exc:
            self._raise_transport(exc, what)
        status = int(result.status or 0)
        if status in (403, 404):
            return False  # refused, or gone since the listing: the read will say so, in the job
        if status >= 300:
            self._raise_for_result(result, what)
        return bool(result.body.sseKms or result.body.sseC)

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        if start == end:
            return
        key = key_for(self._prefix, path)
        what = f"read {path}"
        try:
            result = self._client.getObject(
                self._bucket, key, headers=GetObjectHeader(range=f"{start}-{end - 1}"),
                extensionHeaders=self._headers(),
            )  # fmt: skip
        except Exception as exc:
            self._raise_transport(exc, what)
        if int(result.status or 0) >= 300:
            self._raise_for_result(result, what)
        stream = result.body.response
        try:
            pieces = iter(lambda: stream.read(PIECE_SIZE), b"")
            yield from repieced(pieces, end - start, self.display, path)
        except Exception as exc:
            self._raise_transport(exc, what)
        finally:
            stream.close()

    def close(self) -> None:
        self._client.close()
