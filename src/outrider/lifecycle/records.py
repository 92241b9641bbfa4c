"""Each engine on disk, so that an outrider that restarts finds its engines again instead of orphaning them.

One directory per engine, `<state dir>/engines/<model name>/`, holding its record (`record.json`, replaced
atomically on every change: a crash leaves the old record or the new one, never half of one), its output
(`output.log`) and the output of its last failed activation (`failed.log`). Model names hold no '/' and never start
with '.', so one model's files can never be another's. The record is written with a fresh launch id before the
engine is launched, and the engine's processes carry that id in their environment (see launch.py), so no engine
runs without a record that finds it, pid or not. A record holds no credential: the artifact is recorded as
displayed (no user:password), and the engine's API key is outrider's own setting.

Records of the earlier layout (`<state dir>/<model>.json` beside `<model>.log`) are still read, and moved into the
new layout as they are: an engine still running keeps writing to its moved output file (same inode).
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

from outrider.lifecycle.phases import RECORDED, Phase, check
from outrider.lifecycle.process import Identity
from outrider.transfer.state import write_json_atomic

log = logging.getLogger(__name__)

# Completed operation ids kept per action for idempotency, as AIBrix keeps them: a controller retries an
# operation within seconds, never 128 operations later.
OPERATIONS_KEPT = 128
# The record format; a record of another version is ignored (and reported), not misread.
VERSION = 1
# The per-engine files; the output of the last activation of a model that failed is kept under another name, for a
# person to read (it was in outrider's log too, line by line).
ENGINES_DIR = "engines"
RECORD_FILE = "record.json"
OUTPUT_FILE = "output.log"
FAILED_FILE = "failed.log"


@dataclasses.dataclass
class EngineRecord:
    """One engine: what was asked, where it runs, and the phase it is in."""

    model_name: str
    engine: str
    artifact_url: str  # as displayed: never with credentials
    port: int
    ipc_name: str
    phase: Phase = Phase.DOWNLOADING
    model_path: str | None = None
    # Written before the launch; the engine's processes carry it as OUTRIDER_LAUNCH_ID (found again without a pid).
    launch_id: str | None = None
    # The engine flags the engine was launched with (argv tokens, as checked): a re-activation must ask the same.
    flags: list[str] | None = None
    # The kvcached segment outrider created for this engine: (st_dev, st_ino), never another file of that name.
    ipc_claim: list[int] | None = None
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

    def __post_init__(self) -> None:
        self.phase = Phase(self.phase)  # a record built with the phase's text gets the phase itself

    @property
    def identity(self) -> Identity | None:
        if self.pid is None or self.start_ticks is None or self.boot_id is None:
            return None
        return Identity(self.pid, self.start_ticks, self.boot_id)

    def set_identity(self, ident: Identity) -> None:
        self.pid, self.start_ticks, self.boot_id = ident.pid, ident.start_ticks, ident.boot_id

    def transition(self, phase: Phase, error: str | None = None) -> None:
        """Move to `phase`; raises phases.IllegalTransition for a move the state machine does not allow."""
        check(self.model_name, self.phase, phase)
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
    if values.get("phase") not in RECORDED:
        raise ValueError(f"invalid phase {values.get('phase')!r}")
    record = EngineRecord(**values)
    checks: list[tuple[str, bool]] = [
        ("model_name", isinstance(record.model_name, str) and bool(record.model_name)),
        ("engine", isinstance(record.engine, str)),
        ("artifact_url", isinstance(record.artifact_url, str)),
        ("port", isinstance(record.port, int) and 0 < record.port < 65536),
        ("ipc_name", isinstance(record.ipc_name, str)),
        ("phase", isinstance(record.phase, Phase) and record.phase in RECORDED),
        ("launch_id", record.launch_id is None or (isinstance(record.launch_id, str) and bool(record.launch_id))),
        (
            "flags",
            record.flags is None or (isinstance(record.flags, list) and all(isinstance(f, str) for f in record.flags)),
        ),
        (
            "ipc_claim",
            record.ipc_claim is None
            or (
                isinstance(record.ipc_claim, list)
                and len(record.ipc_claim) == 2
                and all(isinstance(n, int) for n in record.ipc_claim)
            ),
        ),
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
    """The records under one directory (created on first use, readable by outrider's user only). Blocking: call
    the methods from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.engines = directory / ENGINES_DIR

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engines.mkdir(exist_ok=True, mode=0o700)

    def engine_dir(self, model_name: str) -> Path:
        return self.engines / model_name

    def path(self, model_name: str) -> Path:
        return self.engine_dir(model_name) / RECORD_FILE

    def output_path(self, model_name: str) -> Path:
        return self.engine_dir(model_name) / OUTPUT_FILE

    def failed_output_path(self, model_name: str) -> Path:
        return self.engine_dir(model_name) / FAILED_FILE

    def save(self, record: EngineRecord) -> None:
        self.engine_dir(record.model_name).mkdir(exist_ok=True, mode=0o700)
        write_json_atomic(self.path(record.model_name), record.to_json())

    def remove(self, model_name: str, *, keep_output: bool = False) -> None:
        """Forget an engine; `keep_output` keeps its output as its `failed.log` (replacing an older one). The
        directory goes too when nothing is left in it."""
        if keep_output:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.output_path(model_name), self.failed_output_path(model_name))
        for path in (self.path(model_name), self.output_path(model_name)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):  # not empty (a failed.log kept), or already gone
            self.engine_dir(model_name).rmdir()

    def load_all(self) -> list[EngineRecord]:
        """Every readable record, those of the earlier layout moved into this one first; an unreadable or invalid
        one is reported and left in place for a person to see."""
        self._move_old_records()
        records = []
        for path in sorted(self.engines.glob(f"*/{RECORD_FILE}")):
            record = _read(path)
            if record is None:
                continue
            if path.parent.name != record.model_name:
                log.warning("ignoring engine record %s: its directory does not match its model_name", path)
                continue
            records.append(record)
        return records

    def _move_old_records(self) -> None:
        """`<model>.json` and `<model>.log` of the earlier layout -> `engines/<model>/`. Only a readable record is
        moved (with its own output file); a record already in the new layout wins over an old one."""
        for path in sorted(self.directory.glob("*.json")):
            record = _read(path)
            if record is None or path.name != f"{record.model_name}.json":
                if record is not None:
                    log.warning("ignoring engine record %s: the file name does not match its model_name", path)
                continue
            if self.path(record.model_name).exists():
                log.warning("ignoring engine record %s: %s has a record of the current layout", path, record.model_name)
                continue
            self.engine_dir(record.model_name).mkdir(parents=True, exist_ok=True, mode=0o700)
            old_output = self.directory / f"{record.model_name}.log"
            with contextlib.suppress(FileNotFoundError):
                os.replace(old_output, self.output_path(record.model_name))
            os.replace(path, self.path(record.model_name))
            log.info("moved the engine record of %s into %s", record.model_name, self.engine_dir(record.model_name))


def _read(path: Path) -> EngineRecord | None:
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return _from_json(data)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring engine record %s: %s", path, exc)
        return None
