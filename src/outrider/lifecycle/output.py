"""An engine's output, followed into outrider's log: one event per line, with the model's name.

Engines write to a file of their own (see process.spawn), which this follows by reading what was appended. The file
is emptied once it has been read and has grown past MAX_FILE_BYTES: the engine opened it for appending, so its next
write lands at the new start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

log = logging.getLogger("outrider.engine")

# How often the file is looked at. There is no portable event for "a file grew"; a quarter second keeps the log
# current for a person watching it and costs one stat call per engine.
POLL = 0.25
# The longest line logged whole; a longer one (a dumped tensor, say) is cut, so one line cannot flood the log.
MAX_LINE = 8192
# Empty the file after this much has been read, so a long-lived engine does not fill the state directory.
MAX_FILE_BYTES = 64 * 1024 * 1024
READ_SIZE = 1024 * 1024


class OutputFollower:
    """Follows one engine's output file from `offset` (the end of the file for an adopted engine: what it wrote
    while no outrider was running is left in the file, not replayed)."""

    def __init__(self, path: Path, model: str, offset: int = 0) -> None:
        self.path = path
        self.model = model
        self.offset = offset
        self._partial = b""

    async def run(self) -> None:
        """Log new lines until cancelled; then log what was left (the engine's last words on a stop)."""
        try:
            while True:
                await trio.to_thread.run_sync(self.read_new)
                await trio.sleep(POLL)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.read_new)
                self._emit(self._partial)
                self._partial = b""

    def read_new(self) -> None:
        """Read and log what was appended since the last call (blocking: a thread)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # emptied by someone else: start over
                    self.offset = 0
                f.seek(self.offset)
                while chunk := f.read(READ_SIZE):
                    self.offset += len(chunk)
                    self._feed(chunk)
            if self.offset > MAX_FILE_BYTES:
                os.truncate(self.path, 0)
                self.offset = 0
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the output of engine %s: %s", self.model, exc, extra={"model": self.model})

    def _feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._emit(self._partial)
            self._partial = b""
        for line in lines:
            self._emit(line)

    def _emit(self, raw: bytes) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not text.strip():
            return
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + " ..."
        log.info("%s", text, extra={"model": self.model})
