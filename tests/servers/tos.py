"""A local Volcengine TOS endpoint: the requests `tos.TosClientV2` sends for a custom-domain bucket.

With `is_custom_domain=True` the SDK sends no bucket on the wire (`GET /?list-type=2...`, `GET /{key}`): the
endpoint stands for one bucket, so this server serves exactly one (`bucket`), which may be made to not exist.

Faithful to the SDK (tos 2.x, read from its source):
- Signing: `Authorization: TOS4-HMAC-SHA256 Credential={ak}/{yyyymmdd}/{region}/tos/request, SignedHeaders=...,
  Signature=...` over the canonical request (method, path quoted with safe '/~', sorted query quoted with safe
  '-_.~', the signed headers, the `x-tos-content-sha256` value), dated by `x-tos-date`. The server recomputes the
  signature with the secret it holds for that access key and refuses a mismatch (403 SignatureDoesNotMatch), an
  unknown key (403 InvalidAccessKeyId), a missing header (403 AccessDenied) or a wrong region in the scope.
- ListObjectsType2: the JSON body the SDK parses (`Name`, `Prefix`, `MaxKeys`, `KeyCount`, `IsTruncated`,
  `ContinuationToken`, `NextContinuationToken`, `Contents[]` with `Key`, `LastModified`, `ETag`, `Size`,
  `StorageClass`, `HashCrc64ecma` (decimal string), `Owner`). `max_page` caps a page below `max-keys` so tests
  exercise continuation.
- GetObject/HeadObject: one `Range`, 206 with `Content-Range`, `ETag`, `Last-Modified`, `x-tos-hash-crc64ecma`
  (of the whole object), `x-tos-request-id`, `x-tos-storage-class`.
- Errors: JSON `{"Code", "Message", "RequestId", "HostId", "EC"}`, which the SDK turns into TosServerError.

Known differences: one bucket per server; no virtual-host addressing (`bucket.host` does not resolve on
loopback), no `delimiter`, `start-after`, `encoding-type`, versions, SSE, presigned URLs or STS tokens; clock skew
is not checked; `EC` codes are placeholders. `fail_status` answers every request with that status.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import threading
import uuid
from email.utils import formatdate
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import crcmod

from tests.servers._threaded import QuietHandler, ThreadedServer, parse_range

_AUTH_RE = re.compile(r"^TOS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]+)$")
# CRC-64/XZ (ECMA-182 polynomial, reflected, all-ones init and xor-out): what TOS reports as HashCrc64ecma.
crc64ecma = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, rev=True, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF)


@dataclasses.dataclass
class TosObject:
    data: bytes
    etag: str
    crc64: int


class TosServer(ThreadedServer):
    def __init__(self, *, bucket: str, region: str, credentials: dict[str, str], max_page: int = 1000) -> None:
        super().__init__(_TosHandler)
        self.bucket = bucket
        self.bucket_exists = True
        self.region = region
        self.credentials = credentials
        self.max_page = max_page
        self.objects: dict[str, TosObject] = {}
        self.fail_status: int | None = None
        self.seen_auth: list[str | None] = []
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = TosObject(data, hashlib.md5(data).hexdigest(), crc64ecma(data))

    def record(self, auth: str | None) -> None:
        with self._lock:
            self.seen_auth.append(auth)


def _signing_key(secret: str, day: str, region: str) -> bytes:
    key = secret.encode()
    for part in (day, region, "tos", "request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class _TosHandler(QuietHandler):
    @property
    def tos(self) -> TosServer:
        return self.server.app  # type: ignore[attr-defined, no-any-return]

    def _error(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex
        body = {"Code": code, "Message": message, "RequestId": request_id, "HostId": "local", "EC": "0000-00000000"}
        headers = {"Content-Type": "application/json", "x-tos-request-id": request_id}
        self.reply(status, json.dumps(body).encode(), headers)

    def _verify_signature(self) -> bool:
        """Recompute the SDK's TOS4-HMAC-SHA256 signature; on mismatch send TOS's error and return False."""
        auth = self.headers.get("Authorization")
        self.tos.record(auth)
        if auth is None:
            self._error(403, "AccessDenied", "Access Denied: the request is not signed")
            return False
        match = _AUTH_RE.match(auth)
        if match is None:
            self._error(403, "AccessDenied", "Malformed Authorization header")
            return False
        credential, signed, signature = match.groups()
        ak, day, region, service, terminal = ([*credential.split("/"), "", "", "", "", ""])[:5]
        secret = self.tos.credentials.get(ak)
        if secret is None:
            self._error(403, "InvalidAccessKeyId", "The access key ID you provided does not exist in our records.")
            return False
        if region != self.tos.region or service != "tos" or terminal != "request":
            self._error(403, "SignatureDoesNotMatch", f"Credential scope does not match region {self.tos.region}")
            return False
        url = urlsplit(self.path)
        query = parse_qsl(url.query, keep_blank_values=True)
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted(query)
            if k.lower() != "x-tos-signature"
        )
        names = signed.split(";")
        canonical_headers = "".join(f"{name}:{self.headers.get(name, '')}\n" for name in names)
        canonical = "\n".join(
            [
                self.command.upper(),
                quote(unquote(url.path), safe="/~"),
                canonical_query,
                canonical_headers,
                signed,
                self.headers.get("x-tos-content-sha256") or "UNSIGNED-PAYLOAD",
            ]
        )
        date = self.headers.get("x-tos-date", "")
        to_sign = "\n".join(
            ["TOS4-HMAC-SHA256", date, f"{day}/{region}/tos/request", hashlib.sha256(canonical.encode()).hexdigest()]
        )
        expected = hmac.new(_signing_key(secret, date[:8], region), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature) or date[:8] != day:
            self._error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
            return False
        return True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.tos.fail_status is not None:
            self._error(self.tos.fail_status, "InternalError", "We encountered an internal error, please try again.")
            return
        if not self._verify_signature():
            return
        if not self.tos.bucket_exists:
            self._error(404, "NoSuchBucket", "The specified bucket does not exist.")
            return
        url = urlsplit(self.path)
        if url.path == "/":
            self._list(dict(parse_qsl(url.query, keep_blank_values=True)))
        else:
            self._object(unquote(url.path[1:]))

    def _list(self, query: dict[str, str]) -> None:
        if query.get("list-type") != "2":
            self._error(400, "InvalidArgument", "only list-type=2 is served here")
            return
        prefix = query.get("prefix", "")
        limit = min(int(query.get("max-keys", "1000")), self.tos.max_page)
        keys = sorted(k for k in self.tos.objects if k.startswith(prefix))
        token = query.get("continuation-token")
        if token:
            after = base64.urlsafe_b64decode(token.encode()).decode()
            keys = [k for k in keys if k > after]
        page, rest = keys[:limit], keys[limit:]
        contents = []
        for key in page:
            obj = self.tos.objects[key]
            contents.append(
                {
                    "Key": key,
                    "LastModified": "2024-06-11T00:00:00.000Z",
                    "ETag": f'"{obj.etag}"',
                    "Size": len(obj.data),
                    "StorageClass": "STANDARD",
                    "HashCrc64ecma": str(obj.crc64),
                    "Owner": {"ID": "local-owner", "DisplayName": "local-owner"},
                    "Type": "Normal",
                }
            )
        body: dict[str, object] = {
            "Name": self.tos.bucket,
            "Prefix": prefix,
            "MaxKeys": limit,
            "KeyCount": len(page),
            "IsTruncated": bool(rest),
            "Contents": contents,
        }
        if token:
            body["ContinuationToken"] = token
        if rest:
            body["NextContinuationToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _object(self, key: str) -> None:
        obj = self.tos.objects.get(key)
        if obj is None:
            self._error(404, "NoSuchKey", "The specified key does not exist.")
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{obj.etag}"',
            "Last-Modified": formatdate(1718064000, usegmt=True),
            "x-tos-hash-crc64ecma": str(obj.crc64),
            "x-tos-request-id": uuid.uuid4().hex,
            "x-tos-storage-class": "STANDARD",
            "Accept-Ranges": "bytes",
        }
        try:
            span = parse_range(self.headers.get("Range"), len(obj.data))
        except ValueError:
            self._error(416, "InvalidRange", "The requested range is not satisfiable")
            return
        if span is None:
            self.reply(200, obj.data, headers)
            return
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(obj.data)}"
        self.reply(206, obj.data[start : end + 1], headers)
