"""A TCP proxy in front of a store (moto) that counts what the store served and can slow each connection down.

What crosses it is the store's real answers, byte for byte: the count is of every byte sent from the store to the
clients (headers and listings included), so "the store served each byte once" can be checked from outside the
processes under test. `bytes_per_second` limits each connection, as a store's per-connection throughput would, so
that a download lasts long enough to be interrupted mid-way.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

RECV = 64 * 1024


class CountingProxy:
    def __init__(self, upstream_port: int, bytes_per_second: float | None = None) -> None:
        self.upstream_port = upstream_port
        self.bytes_per_second = bytes_per_second
        self.served = 0  # bytes from the store to clients
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_store: bool) -> None:
        try:
            while True:
                data = src.recv(RECV)
                if not data:
                    break
                dst.sendall(data)
                if from_store:
                    with self._lock:
                        self.served += len(data)
                    if self.bytes_per_second:
                        time.sleep(len(data) / self.bytes_per_second)  # the link's pace, not a synchronization
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
