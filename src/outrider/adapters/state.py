"""The record outrider keeps for each declared adapter, and how it is shown to callers."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from outrider.adapters.names import display_source
from outrider.errors import OutriderError


class State(enum.StrEnum):
    PENDING = "pending"  # declared, not (yet, or no longer) loaded; the next pass will act
    DOWNLOADING = "downloading"  # the fetcher is making its files available
    LOADING = "loading"  # the engine has been asked to load it
    LOADED = "loaded"  # the engine lists it, from the path outrider gave
    UNLOADING = "unloading"  # retracted; the engine has been asked to unload it
    FAILED = "failed"  # the last attempt failed; retried after a backoff


class Origin(enum.StrEnum):
    API = "api"  # PUT /v1/adapters/{name} or a compatible load route
    FILE = "file"  # the --adapters-file; the file owns these names


@dataclasses.dataclass(frozen=True)
class Ticket:
    """What a caller saw when it declared or retracted, so it can wait for *later* outcomes only."""

    name: str
    generation: int
    outcomes: int
    engine_failures: int
    created: bool = False  # this call created the record


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).isoformat(timespec="milliseconds")


@dataclasses.dataclass(eq=False)
class Adapter:
    """One declared (or being-retracted) adapter. Mutated only by the reconciler, on the event loop."""

    name: str
    source: str
    config: Mapping[str, object] | None
    dest: Path  # where a download lands; volume sources are used in place instead
    origin: Origin
    created_at: float  # wall clock, for people
    state: State = State.PENDING
    desired: bool = True
    generation: int = 1  # bumped when the declaration changes (source, config or dest)
    attempts: int = 0  # attempts made for this generation
    failures: int = 0  # failed attempts in a row: drives the backoff
    outcomes: int = 0  # attempts finished, either way; waiters watch it
    error: OutriderError | None = None  # of the last attempt
    retry_at: float = 0.0  # trio clock; no attempt before it
    path: Path | None = None  # the directory handed to the engine, once fetched
    downloaded: bool = False  # `path` was written by outrider (deleted once no longer declared), not a volume source
    keep_files: bool = False  # retracted with AIBrix's `cleanup_local: false`: what it downloaded stays on disk
    # What outrider downloaded for the declaration this one replaced (another source, or another directory):
    # deleted before the new one is fetched, so a new source never lands among the old one's files.
    superseded: Path | None = None
    loaded_path: str | None = None  # set while the engine holds it because outrider loaded (or adopted) it
    loaded_at: float | None = None
    updated_at: float = 0.0
    fetch_scope: trio.CancelScope | None = None
    # `source` is a path the engine reads as given (AIBrix's plain load of a path on a volume outrider may not see):
    # never fetched, checked or deleted by outrider.
    engine_path: bool = False

    def to_json(self, now: float) -> dict[str, Any]:
        error = None
        if self.error is not None:
            error = {"type": self.error.type, "message": self.error.message, "status": self.error.status}
        retry_in = None
        if self.state == State.FAILED and self.retry_at > now:
            retry_in = round(self.retry_at - now, 3)
        return {
            "name": self.name,
            "source": display_source(self.source),
            # Only the keys: values may be credentials.
            "config_keys": sorted(self.config) if self.config else [],
            "origin": str(self.origin),
            "desired": self.desired,
            "state": str(self.state),
            "path": str(self.path) if self.path is not None else None,
            "attempts": self.attempts,
            "last_error": error,
            "retry_in_seconds": retry_in,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "loaded_at": _iso(self.loaded_at),
        }
