"""Lets hypercorn finish what it does inside the Quart app's `send`, whatever quart-trio cancels.

Hypercorn runs part of a connection's bookkeeping inside the app's `send` call: when the last piece of a response
goes out while the request body has not all arrived (Quart answers a 405 or 404 without reading the body, and a
client such as `requests` sends headers and body in separate packets), that call also tells the app the client
is gone and closes the connection. quart-trio's body reader sees that `http.disconnect` and cancels its request
task, which is the task still inside `send`: the close was cut short, the socket stayed open, and the next request
on that keep-alive connection was never answered. (Found by the schemathesis session; reproduced with a 405
whose body arrives in a second packet, then a second request.) Shielding the call lets the close complete.

The shield cannot hold a request forever: hypercorn already shields its socket writes, and a closing connection
only sends an EOF and closes.
"""

from __future__ import annotations

import trio

from outrider.http.hot import ASGIApp, Message, Receive, Scope, Send


class ShieldedSend:
    """ASGI wrapper: every `send` of the wrapped app runs to completion, even if the app's task is cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def shielded_send(message: Message) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self._app(scope, receive, shielded_send)
