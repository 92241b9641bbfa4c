"""An in-memory `Source` with scripted faults, for unit tests of the transfer engine.

Each `read_range` call takes the next action from `script` (default "ok"):
- "ok": the bytes, in pieces of `piece_size`;
- "fail": SourceTransientError before any byte (a 500 from the store);
- "reset": half the range, then SourceTransientError (a connection reset mid-stream);
- "stall": half the range, then block until `release` is set (a read that hangs), then stop;
- "deny": SourceAccessDenied (a 403).
Reads are recorded (path, start, end) so tests can count what was fetched.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Iterator

from outrider.errors import SourceAccessDenied, SourceNotFound, SourceTransientError
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source


class MemorySource(Source):
    def __init__(
        self,
        files: dict[str, bytes],
        *,
        display: str = "mem://bucket/model",
        checksum: str | None = "sha256",
        piece_size: int = PIECE_SIZE,
    ) -> None:
        self.files = files
        self.display = display
        self.checksum = checksum
        self.piece_size = piece_size
        self.versions: dict[str, str] = {}
        self.listed_checksums: dict[str, Checksum] = {}  # overrides, e.g. a wrong one
        self.listed_sizes: dict[str, int] = {}  # overrides, e.g. more than the disk has
        self.script: collections.deque[str] = collections.deque()
        self.script_for: dict[str, collections.deque[str]] = {}
        self.release = threading.Event()
        # (offset, gate): reads from `offset` on wait for the gate (at most 30 s), e.g. to hold a download halfway.
        self.block_after: tuple[int, threading.Event] | None = None
        self.reads: list[tuple[str, int, int]] = []
        self.closed = False
        self._lock = threading.Lock()

    def list_files(self) -> list[RemoteFile]:
        out = []
        for path, data in self.files.items():
            checksum = self.listed_checksums.get(path)
            if checksum is None and self.checksum == "sha256":
                checksum = Checksum("sha256", hashlib.sha256(data).hexdigest())
            elif checksum is None and self.checksum == "md5":
                checksum = Checksum("md5", hashlib.md5(data).hexdigest())
            size = self.listed_sizes.get(path, len(data))
            out.append(RemoteFile(path, size, checksum, self.versions.get(path, "v1")))
        return out

    def reads_of(self, path: str) -> list[tuple[int, int]]:
        return [(s, e) for p, s, e in self.reads if p == path]

    def _next_action(self, path: str) -> str:
        with self._lock:
            queue = self.script_for.get(path)
            if queue:
                return queue.popleft()
            return self.script.popleft() if self.script else "ok"

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        if path not in self.files:
            raise SourceNotFound(f"{self.display}/{path}: no such key")
        with self._lock:
            self.reads.append((path, start, end))
        action = self._next_action(path)
        if action == "deny":
            raise SourceAccessDenied(f"{self.display}/{path}: 403 Forbidden (AccessDenied)")
        if action == "fail":
            raise SourceTransientError(f"{self.display}/{path}: 500 InternalError")
        return self._pieces(path, start, end, action)

    def _pieces(self, path: str, start: int, end: int, action: str) -> Iterator[bytes]:
        data = self.files[path]
        if self.block_after is not None and start >= self.block_after[0]:
            self.block_after[1].wait(30)
        stop_at = start + (end - start) // 2 if action in ("reset", "stall") else end
        pos = start
        while pos < stop_at:
            n = min(self.piece_size, stop_at - pos)
            yield data[pos : pos + n]
            pos += n
        if action == "reset":
            raise SourceTransientError(f"{self.display}/{path}: connection reset by peer")
        if action == "stall":
            self.release.wait(30)

    def close(self) -> None:
        self.closed = True
