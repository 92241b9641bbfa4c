"""One download from start to end: plan against the destination's record, check the disk, fetch, record.

`prepare` blocks (it lists the store and reads the destination): call it from a thread. Its errors are the
request's errors (bad filter, missing source, no space) and can be answered before any job exists. `run` fetches
what `prepare` found missing and keeps the record file current after every published file, so a crash between
two files loses nothing that was already published.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from pathlib import Path

import trio

from outrider.errors import InsufficientStorage
from outrider.sources.base import RemoteFile, Source
from outrider.transfer import ownership, state
from outrider.transfer.engine import Transfer, chunk_bounds
from outrider.transfer.paths import join_under
from outrider.transfer.plan import Filters, plan
from outrider.transfer.progress import Progress


@dataclasses.dataclass
class Prepared:
    source: Source
    dest: Path
    files: list[RemoteFile]  # every file the filters kept
    pending: list[RemoteFile]  # those not already published and current
    record: state.Record
    needed_bytes: int  # what the pending files still need on disk (resumable chunks already there excluded)


def _resumable_bytes(final: Path, remote: RemoteFile, chunk_size: int) -> int:
    manifest = state.load_manifest(final, remote, chunk_size)
    if manifest is None:
        return 0
    return sum(e - s for i, (s, e) in enumerate(chunk_bounds(remote.size, chunk_size)) if i in manifest.done)


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def prepare(source: Source, filters: Filters, dest: Path, chunk_size: int, *, dest_field: str = "dest") -> Prepared:
    """List and filter the source, compare with the destination's record, and check free space (blocking).
    `dest` must be absent, empty or outrider's download of this source (`ownership.claim`); refusals name
    `dest_field`, the request's name for the destination."""
    old = ownership.claim(dest, source.display, dest_field)
    files = plan(source, filters)
    if old is None:
        old = state.Record(source=source.display, revision=source.revision, files={})
    pending = []
    needed = 0
    for remote in files:
        final = join_under(dest, remote.path)
        if not old.is_current(dest, remote, final):
            pending.append(remote)
            needed += remote.size - _resumable_bytes(final, remote, chunk_size)
    free = _free_bytes(dest)
    if needed > free:
        raise InsufficientStorage(
            f"the download needs {needed} more bytes under {dest} but only {free} are free", field=dest_field
        )
    keep = {f.path for f in files} - {f.path for f in pending}
    record = state.Record(
        source=source.display,
        revision=source.revision,
        files={path: entry for path, entry in old.files.items() if path in keep},
        complete=not pending and old.complete,
    )
    return Prepared(source, dest, files, pending, record, needed)


def progress_for(prepared: Prepared, progress: Progress) -> Progress:
    """Register every planned file with `progress` (unchanged ones as done)."""
    pending = {f.path for f in prepared.pending}
    for remote in prepared.files:
        if remote.path in pending:
            progress.add_file(remote.path, remote.size)
        else:
            progress.add_file(remote.path, remote.size, remote.size, "unchanged")
    return progress


async def run(
    prepared: Prepared,
    transfer: Transfer,
    progress: Progress,
    stop: threading.Event,
    *,
    workers: int | None = None,
    chunk_size: int | None = None,
) -> None:
    """Fetch the pending files, publish each, and keep the record current; returns when all are verified."""
    record = prepared.record
    dest = prepared.dest
    if record.complete:
        return
    await trio.to_thread.run_sync(_start_record, dest, record)

    async def published(remote: RemoteFile) -> None:
        record.files[remote.path] = state.remote_identity(remote)
        await trio.to_thread.run_sync(state.save_record, dest, record)

    await transfer.fetch(
        prepared.source, prepared.pending, dest, progress, stop, published, workers=workers, chunk_size=chunk_size
    )
    record.complete = True
    await trio.to_thread.run_sync(state.save_record, dest, record)


def _start_record(dest: Path, record: state.Record) -> None:
    os.makedirs(dest, exist_ok=True)
    state.save_record(dest, record)
