"""Live progress of one download, updated by worker threads and read by jobs, HTTP answers and the CLI bar."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

# File states, in the order a file goes through them: pending, fetching, verifying, published; or `unchanged`,
# already published and current, not fetched.


@dataclasses.dataclass
class FileProgress:
    path: str
    size: int
    done: int = 0
    state: str = "pending"

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "bytes_done": self.done, "state": self.state}


class Progress:
    """Byte counters behind a lock: several threads add to them, one piece (<= 1 MiB) at a time."""

    def __init__(self, on_bytes: Callable[[int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_bytes = on_bytes
        self.files: dict[str, FileProgress] = {}
        self.fetched = 0  # bytes received from the source in this run (not counting resumed or unchanged bytes)
        self.started = time.monotonic()
        self.finished: float | None = None
        # Another process writing the same destination, which this download waits for (lock.py), or None.
        self.waiting_for: str | None = None

    def wait_for(self, who: str | None) -> None:
        self.waiting_for = who

    def add_file(self, path: str, size: int, done: int = 0, state: str = "pending") -> FileProgress:
        entry = FileProgress(path, size, done, state)
        self.files[path] = entry
        return entry

    def add(self, entry: FileProgress, nbytes: int) -> None:
        with self._lock:
            entry.done += nbytes
            self.fetched += nbytes
        if self._on_bytes is not None:
            self._on_bytes(nbytes)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def done(self) -> int:
        with self._lock:
            return sum(min(f.done, f.size) for f in self.files.values())

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def rate(self) -> float:
        """Mean bytes per second fetched in this run."""
        return self.fetched / max(self.elapsed(), 1e-3)

    def eta(self) -> float | None:
        rate = self.rate()
        if self.finished is not None:
            return 0.0
        return None if rate <= 0 else max(self.total - self.done, 0) / rate
