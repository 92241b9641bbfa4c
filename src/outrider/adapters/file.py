"""The adapters file: a declared set an operator edits, applied without a restart.

Format (YAML, or JSON, which YAML reads too): a list of entries, or a mapping with an `adapters` list. Each entry
is `{name, source}` with an optional `config` mapping (per-source options such as an endpoint):

    - name: sql-lora
      source: pvc://adapters/sql-lora
    - name: chat-lora
      source: s3://bucket/adapters/chat

The file owns the names it lists: the API cannot change or retract them, and a name the API declared is taken
over when the file lists it. Removing an entry unloads that adapter.

The watcher polls: every interval it compares the file's mtime and size, and when they moved, a hash of the
content. A file that cannot be read or parsed is logged once and the last good set stays in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
import yaml

from outrider.adapters.names import validate_name
from outrider.adapters.reconciler import Declaration, Reconciler
from outrider.errors import InvalidRequest

log = logging.getLogger(__name__)

_KEYS = {"name", "source", "config"}


class AdaptersFileError(ValueError):
    """The adapters file is malformed; the message names the entry and the problem."""


def parse_adapters(text: str) -> list[Declaration]:
    """The declarations in an adapters file's text. Raises AdaptersFileError."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AdaptersFileError(f"not valid YAML or JSON: {exc}") from None
    if data is None:
        return []
    if isinstance(data, dict) and set(data) == {"adapters"}:
        data = data["adapters"] or []
    if not isinstance(data, list):
        raise AdaptersFileError("expected a list of {name, source} entries (or a mapping with an `adapters` list)")
    found: list[Declaration] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        where = f"entry {i + 1}"
        if not isinstance(entry, dict):
            raise AdaptersFileError(f"{where}: expected a mapping with name and source")
        extra = set(entry) - _KEYS
        if extra:
            raise AdaptersFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
        try:
            name = validate_name(entry.get("name"), "name")
        except InvalidRequest as exc:
            raise AdaptersFileError(f"{where}: {exc.message}") from None
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise AdaptersFileError(f"{where} ({name}): source must be a non-empty string")
        config = entry.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise AdaptersFileError(f"{where} ({name}): config must be a mapping")
        if name in seen:
            raise AdaptersFileError(f"{where}: name {name!r} is listed twice")
        seen.add(name)
        found.append(Declaration(name, source.strip(), dict(config) if config is not None else None))
    return found


def _read(path: Path) -> tuple[tuple[int, int], bytes]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size), path.read_bytes()


class AdaptersFileWatcher:
    """Applies the adapters file to the reconciler at start and whenever its content changes."""

    def __init__(self, path: Path, reconciler: Reconciler, interval: float) -> None:
        self.path = path
        self.reconciler = reconciler
        self.interval = interval
        self._stamp: tuple[int, int] | None = None
        self._digest: bytes | None = None
        self._complained = False
        self.applied = 0  # times a good file was applied (for tests and logs)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.check()  # the file's set is declared before the service answers
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("adapters file %s: unexpected failure; keeping the last good set", self.path)

    async def check(self) -> None:
        try:
            stamp = await trio.to_thread.run_sync(lambda: os.stat(self.path))
        except OSError as exc:
            self._complain(f"cannot read it ({exc.strerror})")
            return
        key = (stamp.st_mtime_ns, stamp.st_size)
        if key == self._stamp:
            return
        try:
            key, content = await trio.to_thread.run_sync(_read, self.path)
        except OSError as exc:
            self._complain(f"cannot read it ({exc.strerror})")
            return
        self._stamp = key
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return
        self._digest = digest
        try:
            entries = parse_adapters(content.decode("utf-8"))
        except (AdaptersFileError, UnicodeDecodeError) as exc:
            self._complain(str(exc))
            return
        self._complained = False
        self.reconciler.set_file_entries(entries)
        self.applied += 1
        log.info("adapters file %s applied: %d adapter(s)", self.path, len(entries))

    def _complain(self, problem: str) -> None:
        if not self._complained:
            log.error("adapters file %s: %s; keeping the last good set", self.path, problem)
            self._complained = True
