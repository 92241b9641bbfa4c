"""Each engine on disk, so that an outrider that restarts finds its engines again instead of orphaning them.

One JSON file per engine, `<state dir>/<model name>.json`, replaced atomically on every change of phase (a crash
leaves the old record or the new one, never half of one). The record is written before the engine is launched and
again once its pid is known, so no engine runs without a record naming it. A record holds no credential: the
artifact is recorded as displayed (no user:password), and the engine's API key is outrider's own setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from outrider.lifecycle.process import Identity
from outrider.transfer.state import write_json_atomic

log = logging.getLogger(__name__)

PHASES = ("downloading", "booting", "active", "sleeping", "stopping", "failed")
# Completed operation ids kept per action for idempotency, as AIBrix keeps them: a controller retries an
# operation within seconds, never 128 operations later.
OPERATIONS_KEPT = 128
# The record format; a record of another version is ignored (and reported), not misread.
VERSION = 1
# Engines' output files live beside their records; the output of the last activation of a model that failed is
# kept under another name, for a person to read (it was in outrider's log too, line by line).
OUTPUT_SUFFIX = ".log"
FAILED_SUFFIX = ".failed.log"


@dataclasses.dataclass
class EngineRecord:
    """One engine: what was asked, where it runs, and the phase it is in."""

    model_name: str
    engine: str
    artifact_url: str  # as displayed: never with credentials
    port: int
    ipc_name: str
    phase: str = "downloading"
    model_path: str | None = None
    claim_ref: dict[str, str] | None = None
    pid: int | None = None
    start_ticks: int | None = None
    boot_id: str | None = None
    exit_code: int | None = None
    last_error: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    last_transition: float = dataclasses.field(default_factory=time.time)
    # action ("sleep", "wake", "kv-limit") -> [[operation id, phase it left the engine in], ...], oldest first
    operations: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)

    @property
    def identity(self) -> Identity | None:
        if self.pid is None or self.start_ticks is None or self.boot_id is None:
            return None
        return Identity(self.pid, self.start_ticks, self.boot_id)

    def set_identity(self, ident: Identity) -> None:
        self.pid, self.start_ticks, self.boot_id = ident.pid, ident.start_ticks, ident.boot_id

    def transition(self, phase: str, error: str | None = None) -> None:
        assert phase in PHASES, phase
        self.phase = phase
        self.last_error = error
        self.last_transition = time.time()

    def completed(self, action: str, operation_id: str) -> str | None:
        """The phase a completed operation left the engine in, or None when this id is new for `action`."""
        return next((phase for op, phase in self.operations.get(action, []) if op == operation_id), None)

    def remember(self, action: str, operation_id: str, phase: str) -> None:
        done = self.operations.setdefault(action, [])
        done.append([operation_id, phase])
        del done[:-OPERATIONS_KEPT]

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, **dataclasses.asdict(self)}


def _from_json(data: dict[str, Any]) -> EngineRecord:
    """A record from its file, every field checked (a record is trusted with signals to a pid)."""
    if data.get("version") != VERSION:
        raise ValueError(f"unknown record version {data.get('version')!r}")
    fields = {f.name: f for f in dataclasses.fields(EngineRecord)}
    values = {k: v for k, v in data.items() if k in fields}
    record = EngineRecord(**values)
    checks: list[tuple[str, bool]] = [
        ("model_name", isinstance(record.model_name, str) and bool(record.model_name)),
        ("engine", isinstance(record.engine, str)),
        ("artifact_url", isinstance(record.artifact_url, str)),
        ("port", isinstance(record.port, int) and 0 < record.port < 65536),
        ("ipc_name", isinstance(record.ipc_name, str)),
        ("phase", record.phase in PHASES),
        ("pid", record.pid is None or (isinstance(record.pid, int) and record.pid > 1)),
        ("start_ticks", record.start_ticks is None or isinstance(record.start_ticks, int)),
        ("boot_id", record.boot_id is None or isinstance(record.boot_id, str)),
        ("operations", isinstance(record.operations, dict)),
    ]
    bad = [name for name, ok in checks if not ok]
    if bad:
        raise ValueError(f"invalid {', '.join(bad)}")
    return record


class RecordStore:
    """The records in one directory (created on first use, readable by outrider's user only). Blocking: call the
    methods from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, model_name: str) -> Path:
        return self.directory / f"{model_name}.json"

    def output_path(self, model_name: str) -> Path:
        return self.directory / f"{model_name}{OUTPUT_SUFFIX}"

    def save(self, record: EngineRecord) -> None:
        write_json_atomic(self.path(record.model_name), record.to_json())

    def failed_output_path(self, model_name: str) -> Path:
        return self.directory / f"{model_name}{FAILED_SUFFIX}"

    def remove(self, model_name: str, *, keep_output: bool = False) -> None:
        """Forget an engine; `keep_output` keeps its output as `<model>.failed.log` (replacing an older one)."""
        if keep_output:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.output_path(model_name), self.failed_output_path(model_name))
        for path in (self.path(model_name), self.output_path(model_name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def load_all(self) -> list[EngineRecord]:
        """Every readable record; an unreadable or invalid one is reported and left in place for a person to see."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                record = _from_json(data)
                if path.name != f"{record.model_name}.json":
                    raise ValueError("the file name does not match its model_name")
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring engine record %s: %s", path, exc)
                continue
            records.append(record)
        return records
