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
parts' checksums (its value ends in `-N`) and is skipped. Of what is left, the cheapest to compute wins.

A multipart object with none of those still has its ETag: `<hex>-<N>`, the MD5 of its N parts' MD5s. That needs the
part size, which one more HeadObject (`PartNumber=1`) gives, with the part count. It is used only when the two agree
with the object's size (every part but the last of that size: how the SDKs, the CLI and s5cmd upload) and the
object is not KMS- or customer-key-encrypted (then the ETag is no MD5 at all).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from outrider.errors import SourceAccessDenied
from outrider.sources._common import CONNECT_TIMEOUT, POOL_HEADROOM, READ_TIMEOUT, retry_after_seconds
from outrider.sources.base import VERIFY_COST, Checksum, RemoteFile
from outrider.sources.bucket import (
    DENIED_CODES,
    NOT_FOUND_CODES,
    BucketSource,
    Failure,
    Listed,
    Page,
    RangeBody,
    md5_from_etag,
)
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
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-([1-9][0-9]*)$")

DEFAULT_REGION = "us-east-1"
_TRANSPORT_ERRORS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError and other urllib3 failures
    botocore.exceptions.ResponseStreamingError,  # the body broke while streaming
    botocore.exceptions.IncompleteReadError,
)


def _rank_of(checksum: Checksum) -> int:
    """Where a checksum's algorithm stands in VERIFY_COST: lower is cheaper to compute."""
    return VERIFY_COST.index(checksum.algorithm) if checksum.algorithm in VERIFY_COST else len(VERIFY_COST)


def _names_checksums(obj: Mapping[str, Any]) -> bool:
    """Does a listing entry say the object has additional checksums we can compute?"""
    return any(str(name).lower() in _HEAD_FIELDS for name in obj.get("ChecksumAlgorithm") or [])


def _key_encrypted(head: Mapping[str, Any]) -> bool:
    """Encrypted with a KMS or customer key: the ETag is then not made of MD5s."""
    return head.get("ServerSideEncryption") in _KEY_ENCRYPTION or bool(head.get("SSECustomerAlgorithm"))


def parts_checksum(etag: str | None, size: int, part_one: Mapping[str, Any]) -> Checksum | None:
    """The multipart ETag as a checksum, given the HeadObject answer for part 1; None unless the part count and
    size it gives are consistent with equal parts (all but the last) adding up to `size`."""
    match = _MULTIPART_ETAG.match((etag or "").strip('"').lower())
    if match is None:
        return None
    parts = int(match.group(1))
    part_size = int(part_one.get("ContentLength") or 0)
    if part_one.get("PartsCount") != parts or part_size <= 0:
        return None
    if not (parts - 1) * part_size < size <= parts * part_size:
        return None  # parts of several sizes: the MD5s could not be cut where the store cut them
    return Checksum("md5-parts", match.group(0), part_size)


def checksum_from_head(head: Mapping[str, Any], etag_md5: Checksum | None, single_part: bool) -> Checksum | None:
    """The cheapest usable checksum of the whole object, from a HeadObject answer and the ETag's MD5 (if any)."""
    found: list[Checksum] = []
    encrypted = _key_encrypted(head)
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


class S3Source(BucketSource):
    """A bucket prefix on S3 or an S3-compatible store."""

    # botocore reports some failures by bare status ("404", "403") and AWS adds token and account codes.
    not_found_codes = NOT_FOUND_CODES | {"404"}
    denied_codes = DENIED_CODES | {"InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "401"}
    transient_codes = frozenset(
        {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
    )

    def __init__(self, ref: BucketRef, options: SourceOptions, *, max_workers: int) -> None:
        super().__init__(ref, options)
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

    def _list_page(self, prefix: str, cursor: str | None) -> Page:
        more = {"ContinuationToken": cursor} if cursor else {}
        page = self._client.list_objects_v2(Bucket=self._bucket, Prefix=prefix, **more)
        objects: list[Listed] = []
        for obj in page.get("Contents", []):
            etag = str(obj.get("ETag", "")).strip('"') or None
            md5 = md5_from_etag(etag)
            # A HeadObject may tell more: whether the ETag's MD5 holds, the values of any named checksums, and a
            # multipart ETag's part size.
            ask = md5 is not None or _names_checksums(obj) or _MULTIPART_ETAG.match((etag or "").lower()) is not None
            objects.append(Listed(obj["Key"], int(obj["Size"]), md5, etag, ask))
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        return Page(objects, token or None)

    def _head_checksum(self, key: str, listed: RemoteFile) -> Checksum | None:
        head = self._client.head_object(Bucket=self._bucket, Key=key, ChecksumMode="ENABLED")
        single_part = listed.version is not None and "-" not in listed.version
        found = checksum_from_head(head, listed.checksum, single_part)
        if found is None and not single_part and not _key_encrypted(head):
            part_one = self._client.head_object(Bucket=self._bucket, Key=key, PartNumber=1)
            found = parts_checksum(listed.version, listed.size, part_one)
        return found

    def _open_range(self, key: str, start: int, end: int) -> RangeBody:
        response = self._client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes={start}-{end - 1}")
        body: RangeBody = response["Body"]
        return body

    def _failure(self, exc: Exception) -> Failure | None:
        if isinstance(exc, botocore.exceptions.ClientError):
            error: dict[str, Any] = exc.response.get("Error", {})
            metadata: dict[str, Any] = exc.response.get("ResponseMetadata", {})
            status = int(metadata.get("HTTPStatusCode", 0) or 0)
            retry_after = retry_after_seconds((metadata.get("HTTPHeaders") or {}).get("retry-after"))
            return Failure.answer(str(error.get("Code", "")), status, error.get("Message"), retry_after)
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return Failure("no credentials were given and none were found", error=SourceAccessDenied)
        if isinstance(exc, _TRANSPORT_ERRORS):
            return Failure.transient(str(exc))
        return None

    def close(self) -> None:
        super().close()
        self._client.close()
