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
from collections.abc import Callable
from pathlib import Path

import trio

from outrider.errors import InsufficientStorage, OutriderError
from outrider.sources.base import RemoteFile, Source
from outrider.transfer import ownership, state
from outrider.transfer.engine import Transfer
from outrider.transfer.lock import DestinationLock, LockLost
from outrider.transfer.paths import join_under
from outrider.transfer.plan import Filters, plan
from outrider.transfer.progress import Progress

# Giving a destination up writes its lease once: bounded, as a shutdown must not hang on a dead mount.
RELEASE_TIMEOUT = 5.0


@dataclasses.dataclass
class Prepared:
    source: Source
    dest: Path
    files: list[RemoteFile]  # every file the filters kept
    pending: list[RemoteFile]  # those not already published and current
    record: state.Record
    dest_field: str = "dest"  # the request's name for the destination, named by refusals


def _resumable_bytes(final: Path, remote: RemoteFile, chunk_size: int) -> int:
    manifest = state.load_manifest(final, remote, chunk_size)
    if manifest is None:
        return 0
    return sum(e - s for i, (s, e) in enumerate(state.chunk_bounds(remote.size, chunk_size)) if i in manifest.done)


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _compare(
    source: Source, files: list[RemoteFile], dest: Path, old: state.Record | None
) -> tuple[list[RemoteFile], state.Record]:
    """Blocking: the files not already published and current under `dest`, and the record to keep for the rest
    (`old`: the record `ownership.claim` found there, None for a directory of no one's)."""
    if old is None:
        old = state.Record(source=source.display, revision=source.revision, files={})
    pending = [remote for remote in files if not old.is_current(remote, join_under(dest, remote.path))]
    keep = {f.path for f in files} - {f.path for f in pending}
    record = state.Record(
        source=source.display,
        revision=source.revision,
        files={path: entry for path, entry in old.files.items() if path in keep},
        complete=not pending and old.complete,
    )
    return pending, record


def prepare(source: Source, filters: Filters, dest: Path, chunk_size: int, *, dest_field: str = "dest") -> Prepared:
    """List and filter the source, compare with the destination's record, and check free space (blocking).
    `dest` must be absent, empty or outrider's download of this source (`ownership.claim`); refusals name
    `dest_field`, the request's name for the destination."""
    old = ownership.claim(dest, source.display, dest_field)
    files = plan(source, filters)
    pending, record = _compare(source, files, dest, old)
    needed = sum(r.size - _resumable_bytes(join_under(dest, r.path), r, chunk_size) for r in pending)
    free = _free_bytes(dest)
    if needed > free:
        raise InsufficientStorage(
            f"the download needs {needed} more bytes under {dest} but only {free} are free", field=dest_field
        )
    return Prepared(source, dest, files, pending, record, dest_field)


def _replan(prepared: Prepared, progress: Progress) -> None:
    """Blocking, holding the destination: plan again against the record as the last holder left it (its files
    are published and current now, or resumable from its manifests). The listing is not asked for again."""
    # Claimed again: while this process waited, another may have downloaded another source into it.
    old = ownership.claim(prepared.dest, prepared.source.display, prepared.dest_field)
    prepared.pending, prepared.record = _compare(prepared.source, prepared.files, prepared.dest, old)
    pending = {f.path for f in prepared.pending}
    for remote in prepared.files:
        entry = progress.files.get(remote.path)
        if entry is not None and remote.path not in pending and entry.state == "pending":
            entry.done, entry.state = remote.size, "unchanged"


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
    discard_on_cancel: Callable[[], bool] = lambda: False,
) -> None:
    """Fetch the pending files, publish each, and keep the record current; returns when all are verified.

    The destination is held (lock.py) from the first write to the last: another process writing it is waited
    for, and its work used. A cancel for which `discard_on_cancel()` is true (a cancelled job, not a shutdown)
    removes this run's part files and manifests before the destination is given up, so nobody else's."""
    if prepared.record.complete:
        return
    lock = DestinationLock(prepared.dest)
    await lock.acquire(progress.wait_for)
    try:
        with trio.CancelScope() as writing:
            await _write_held(prepared, transfer, progress, stop, lock, writing, workers, chunk_size)
        if lock.lost:
            raise LockLost(f"another process took over {prepared.dest} while this download was stalled")
    finally:
        with trio.CancelScope(shield=True):
            if discard_on_cancel() and not lock.lost:
                await trio.to_thread.run_sync(_remove_parts, prepared)
            with trio.move_on_after(RELEASE_TIMEOUT):
                await lock.release()


async def _write_held(
    prepared: Prepared,
    transfer: Transfer,
    progress: Progress,
    stop: threading.Event,
    lock: DestinationLock,
    writing: trio.CancelScope,
    workers: int | None,
    chunk_size: int | None,
) -> None:
    """The writing part of `run`, with the destination held and its lease kept alive beside it."""
    error: OutriderError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock.keep, writing)
        try:
            await trio.to_thread.run_sync(_replan, prepared, progress)
            record, dest = prepared.record, prepared.dest
            if record.complete:
                return
            await trio.to_thread.run_sync(_start_record, dest, record)

            async def published(remote: RemoteFile, local: os.stat_result) -> None:
                record.files[remote.path] = state.published_entry(remote, local)
                await trio.to_thread.run_sync(state.save_record, dest, record)

            await transfer.fetch(
                prepared.source,
                prepared.pending,
                dest,
                progress,
                stop,
                published,
                workers=workers,
                chunk_size=chunk_size,
            )
            record.complete = True
            await trio.to_thread.run_sync(state.save_record, dest, record)
        except OutriderError as exc:  # raised after the nursery, not as an exception group
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


def _start_record(dest: Path, record: state.Record) -> None:
    os.makedirs(dest, exist_ok=True)
    state.save_record(dest, record)


def _remove_parts(prepared: Prepared) -> None:
    for remote in prepared.pending:
        state.remove_partial(join_under(prepared.dest, remote.path))
