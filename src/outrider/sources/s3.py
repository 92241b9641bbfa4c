"""`s3://bucket/prefix` through boto3: AWS S3 and S3-compatible stores (MinIO, Ceph, OBS and TOS gateways).

One boto3 client per source, shared by every worker thread (boto3 clients are thread-safe), with a connection pool
sized for the workers. boto3's own retries are off: the transfer engine retries per chunk with its own backoff, and
two retry layers would multiply the wait.

Addressing: path-style whenever an endpoint is given (S3-compatible stores and `localhost` rarely resolve
`bucket.host`), AWS's default otherwise. Credentials: the given keys, else boto3's default chain (env, IRSA web
identity, instance profile) when the options allow ambient credentials, else unsigned requests.

Checksums: a single-part upload's ETag is the MD5 of the object (32 hex digits, no '-'); a multipart ETag is not,
and neither is the ETag of an SSE-KMS or SSE-C encrypted object, though it looks like one. S3 also keeps
"additional checksums" (CRC32, CRC32C, CRC64NVME, SHA1, SHA256): current SDKs send CRC32 with every upload, and S3
adds CRC64NVME to new objects that came without one. The listing shows neither encryption nor checksum values, so
one HeadObject (`ChecksumMode=ENABLED`) per object that could have either tells them: the ETag's MD5 is used only
when the object is not KMS- or customer-key-encrypted, and an additional checksum only when it covers the whole
object (`ChecksumType: FULL_OBJECT`, or a single-part object). A multipart COMPOSITE checksum is a checksum of the
parts' checksums (its value ends in `-N`) and is skipped. Of what is left, the cheapest to compute wins. Multipart
objects the listing names no checksum for are not asked about: there is nothing to find.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from outrider.errors import SourceAccessDenied, SourceError, SourceNotFound, SourceTransientError
from outrider.sources._common import (
    CONNECT_TIMEOUT,
    DENIED_CODES,
    NOT_FOUND_CODES,
    POOL_HEADROOM,
    READ_TIMEOUT,
    check_range,
    key_for,
    list_prefix,
    per_file,
    relative_key,
    repieced,
    scrub,
    secrets_of,
    store_error,
)
from outrider.sources.base import PIECE_SIZE, VERIFY_COST, Checksum, RemoteFile, Source
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

# HeadObject output field for each additional checksum S3 keeps, under our algorithm names.
_HEAD_FIELDS = {
    "crc32": "ChecksumCRC32",
    "crc32c": "ChecksumCRC32C",
    "crc64nvme": "ChecksumCRC64NVME",
    "sha1": "ChecksumSHA1",
    "sha256": "ChecksumSHA256",
}
# Encryption whose objects' ETags are not their MD5 (SSE-S3, "AES256", keeps the MD5).
_KEY_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})

DEFAULT_REGION = "us-east-1"
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
# botocore reports some failures by bare status ("404", "403") and AWS adds token and account codes.
_NOT_FOUND_CODES = NOT_FOUND_CODES | {"404"}
_DENIED_CODES = DENIED_CODES | {"InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "401"}
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
)
_TRANSPORT_ERRORS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError and other urllib3 failures
    botocore.exceptions.ResponseStreamingError,  # the body broke while streaming
    botocore.exceptions.IncompleteReadError,
)


def md5_from_etag(etag: str | None) -> Checksum | None:
    """The MD5 a single-part ETag carries, else None (multipart ETags end in '-N')."""
    if not etag:
        return None
    value = etag.strip('"').lower()
    return Checksum("md5", value) if _MD5_ETAG.match(value) else None


def _rank_of(checksum: Checksum) -> int:
    """Where a checksum's algorithm stands in VERIFY_COST: lower is cheaper to compute."""
    return VERIFY_COST.index(checksum.algorithm) if checksum.algorithm in VERIFY_COST else len(VERIFY_COST)


def _names_checksums(obj: Mapping[str, Any]) -> bool:
    """Does a listing entry say the object has additional checksums we can compute?"""
    return any(str(name).lower() in _HEAD_FIELDS for name in obj.get("ChecksumAlgorithm") or [])


def checksum_from_head(head: Mapping[str, Any], etag_md5: Checksum | None, single_part: bool) -> Checksum | None:
    """The cheapest usable checksum of the whole object, from a HeadObject answer and the ETag's MD5 (if any)."""
    found: list[Checksum] = []
    encrypted = head.get("ServerSideEncryption") in _KEY_ENCRYPTION or head.get("SSECustomerAlgorithm")
    if etag_md5 is not None and not encrypted:
        found.append(etag_md5)
    checksum_type = head.get("ChecksumType")
    if checksum_type == "FULL_OBJECT" or (checksum_type is None and single_part):
        for algorithm, field in _HEAD_FIELDS.items():
            value = head.get(field)
            if not isinstance(value, str) or "-" in value:
                continue
            try:
                found.append(Checksum(algorithm, base64.b64decode(value, validate=True).hex()))
            except (binascii.Error, ValueError):
                continue  # not base64: a store's oddity, not worth failing the listing for
    return min(found, key=_rank_of, default=None)


def raise_for_botocore(exc: Exception, display: str, secrets: tuple[str, ...], what: str) -> NoReturn:
    """Map a boto3 failure to the source error tree, keeping the store's own words and dropping credentials."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error: dict[str, Any] = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = scrub(f"{code or status}: {error.get('Message') or 'no message'}", secrets)
        message = f"{display}: {what}: {detail}"
        raise store_error(
            message, code, status, denied=_DENIED_CODES, not_found=_NOT_FOUND_CODES, transient=_THROTTLE_CODES
        ) from None
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        raise SourceAccessDenied(f"{display}: {what}: no credentials were given and none were found") from None
    if isinstance(exc, _TRANSPORT_ERRORS):
        raise SourceTransientError(f"{display}: {what}: {scrub(str(exc), secrets)}") from None
    raise SourceError(f"{display}: {what}: {type(exc).__name__}: {scrub(str(exc), secrets)}") from None


class S3Source(Source):
    """A bucket prefix on S3 or an S3-compatible store."""

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        self.display = ref.display
        self._bucket = ref.bucket
        self._prefix = ref.prefix
        self._secrets = secrets_of(options)
        anonymous = not options.access_key and not options.ambient_credentials
        config = Config(
            s3={"addressing_style": "path" if options.endpoint else "auto"},
            max_pool_connections=max(1, max_workers) + POOL_HEADROOM,
            retries={"total_max_attempts": 1, "mode": "standard"},
            # botocore >= 1.36 asks for checksums on every GetObject and checks a ranged answer against any it
            # gets. S3 sends none for a range, but some stores send the whole object's (old Ceph RGW): a check
            # that cannot pass. The transfer engine verifies whole files itself, so reads do not ask.
            response_checksum_validation="when_required",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            signature_version=UNSIGNED if anonymous else None,
            user_agent_extra="outrider",
        )
        # A session of its own, so no profile or env default leaks in through boto3's global session.
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=options.endpoint,
            region_name=options.region or DEFAULT_REGION,
            aws_access_key_id=options.access_key,
            aws_secret_access_key=options.secret_key,
            aws_session_token=options.session_token if options.access_key else None,
            config=config,
        )

    def list_files(self) -> list[RemoteFile]:
        prefix = list_prefix(self._prefix)
        files: list[RemoteFile] = []
        ask: list[int] = []  # files a HeadObject may tell more about: an ETag MD5 to confirm, or named checksums
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = relative_key(prefix, obj["Key"], self.display)
                    if rel is None:
                        continue
                    etag = str(obj.get("ETag", "")).strip('"') or None
                    remote = RemoteFile(rel, int(obj["Size"]), md5_from_etag(etag), etag)
                    files.append(remote)
                    if remote.checksum is not None or _names_checksums(obj):
                        ask.append(len(files) - 1)
        except Exception as exc:
            raise_for_botocore(exc, self.display, self._secrets, "list")
        if not files:
            raise SourceNotFound(f"{self.display}: no objects under this prefix")
        found = per_file(self._head_checksum, [files[i] for i in ask])
        for index, checksum in zip(ask, found, strict=True):
            files[index] = dataclasses.replace(files[index], checksum=checksum)
        return files

    def _head_checksum(self, remote: RemoteFile) -> Checksum | None:
        key = key_for(self._prefix, remote.path)
        try:
            try:
                head = self._client.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
            except Exception as exc:
                raise_for_botocore(exc, self.display, self._secrets, f"head {remote.path}")
        except (SourceAccessDenied, SourceNotFound):
            # Not allowed to read the object, or it went away since the listing: the read will say so, in the job.
            # Until then, what the listing gave stands.
            return remote.checksum
        single_part = remote.version is not None and "-" not in remote.version
        return checksum_from_head(head, remote.checksum, single_part)

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        if start == end:
            return
        key = key_for(self._prefix, path)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        except Exception as exc:
            raise_for_botocore(exc, self.display, self._secrets, f"read {path}")
        body = response["Body"]
        try:
            yield from repieced(body.iter_chunks(PIECE_SIZE), end - start, self.display, path)
        except SourceError:
            raise
        except Exception as exc:
            raise_for_botocore(exc, self.display, self._secrets, f"read {path}")
        finally:
            body.close()

    def close(self) -> None:
        self._client.close()
