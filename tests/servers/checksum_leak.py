"""A pass-through proxy to an S3 endpoint that adds the whole object's checksum to ranged GET answers that ask
for checksums (`x-amz-checksum-mode: ENABLED`, which botocore >= 1.36 sends on every GetObject by default).

That is what Ceph RGW did before its fix (ceph/ceph#61901, 2025): S3 itself sends no checksum for an arbitrary
range, but RGW sent the whole object's, and a client checking the answer against it fails (botocore:
FlexibleChecksumError once it reads to the end) or at least spends CPU on a check that cannot pass. Requests are
forwarded unchanged, Host header included, so SigV4 signatures made for the proxy's address still verify at the
endpoint behind it. Only `x-amz-checksum-crc32` is added, with the value in `checksums` for the request's path
(`/bucket/key`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.servers._threaded import QuietHandler, ThreadedServer, forward


class ChecksumLeakProxy(ThreadedServer):
    def __init__(self, upstream: str, checksums: dict[str, str]) -> None:
        super().__init__(_Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.checksums = checksums  # request path -> base64 CRC32 of the whole object
        self.leaked = 0  # ranged answers that carried a whole-object checksum


class _Handler(QuietHandler):
    def _forward(self) -> None:
        app: ChecksumLeakProxy = self.server.app  # type: ignore[attr-defined]
        status, data, headers = forward(self, app.upstream)
        path = urlsplit(self.path).path
        asked = (self.headers.get("x-amz-checksum-mode") or "").upper() == "ENABLED"
        ranged = self.command == "GET" and self.headers.get("Range") and status == 206
        if ranged and asked and path in app.checksums:
            headers["x-amz-checksum-crc32"] = app.checksums[path]
            app.leaked += 1
        self.reply(status, data, headers)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward
