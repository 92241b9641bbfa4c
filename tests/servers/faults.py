"""An S3-dialect endpoint that fails every request with one status and an S3 XML error body: the 5xx and
throttling answers moto cannot be made to give. It records each request's Authorization header, so a test can
see what credentials a client sent to an endpoint."""

from __future__ import annotations

from tests.servers._threaded import QuietHandler, ThreadedServer

_CODES = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied"}


class FaultServer(ThreadedServer):
    def __init__(self, status: int = 500) -> None:
        super().__init__(_FaultHandler)
        self.status = status
        self.requests = 0
        self.seen_auth: list[str | None] = []  # the Authorization header of each request, None when unsigned


class _FaultHandler(QuietHandler):
    def _fail(self) -> None:
        app: FaultServer = self.server.app  # type: ignore[attr-defined]
        app.requests += 1
        app.seen_auth.append(self.headers.get("Authorization"))
        code = _CODES.get(app.status, "InternalError")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected {app.status}</Message>"
            "<RequestId>fault</RequestId><HostId>fault</HostId></Error>"
        ).encode()
        self.reply(app.status, body, {"Content-Type": "application/xml"})

    do_GET = do_HEAD = do_PUT = do_POST = _fail
