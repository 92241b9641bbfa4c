"""The engine ports: a port of the operator's range that no engine holds and that can be bound now."""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

from outrider.errors import Conflict, InvalidRequest


async def pick(host: str, ports: tuple[int, int], wanted: int, taken: Callable[[int], bool]) -> int:
    """`wanted` (0: the first free one). The caller reserves the port (by recording the engine) with no await in
    between; `taken` is asked again after each await, so two activations never pick the same port."""
    low, high = ports
    if wanted and not low <= wanted <= high:
        raise InvalidRequest(f"port {wanted} is outside the engine port range {low}-{high}", field="port")
    for port in [wanted] if wanted else range(low, high + 1):
        if taken(port):
            continue
        if await trio.to_thread.run_sync(bindable, host, port) and not taken(port):
            return port
    if wanted:
        raise Conflict(f"port {wanted} is in use", field="port")
    raise Conflict(f"no free port left in the engine port range {low}-{high}", field="port")


def bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the engine's server will
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
