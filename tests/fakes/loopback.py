"""A restartable HTTP stand-in on a loopback socket: the part every fake server of the tests shares.

Subclasses implement `_handle(stream)` for one connection. `stop` closes the listener and drops connections in
progress (the server is down: connections are refused); `start` again listens on the same port (it came back).
"""

from __future__ import annotations

import trio


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0  # chosen by the OS at the first start, kept across restarts
        self._scope: trio.CancelScope | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen (on the previous port when restarting) and serve in `nursery` until `stop`."""
        self._scope = await nursery.start(self._serve)

    def stop(self) -> None:
        """Close the listener and drop connections in progress: the server is down."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _serve(self, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                task_status.started(scope)
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        raise NotImplementedError
