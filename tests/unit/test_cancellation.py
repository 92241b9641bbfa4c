"""Cancelling a download while its threads hash or publish: the threads stop, and a file is renamed or not.

No test here waits on the wall clock: threads are held on events, and a cancel is acted on before they are let go
(trio.testing.wait_all_tasks_blocked).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.sources.base import Checksum
from outrider.transfer import checksums, download, engine, state
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from tests.fakes.sources import MemorySource

CHUNK = 256 * 1024
HASH_PIECE = 16 * 1024  # what the engine hashes per read once PIECE_SIZE is patched to a quarter of it
SIZE = 64 * HASH_PIECE  # 1 MiB: 64 hash pieces, 4 download chunks
# How long a cancelled download may take to return while its hashing thread is held: its cleanup is a few small
# file operations, so only a download that waits for the held thread (the defect) comes near this.
RETURN_WAIT = 10.0


class HeldHash:
    """Stands in for checksums.new_digest: its digests count the bytes hashed, and the first piece hashed by any of
    them is held (the thread blocks) until `gate` is set, after `reached` tells the test it got there."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.reached = trio.Event()
        self.gate = threading.Event()
        self.hashed = 0
        self._held = False
        self._lock = threading.Lock()
        self._real = checksums.new_digest

    def new_digest(self, expected: Checksum | None) -> checksums.Digest | None:
        digest = self._real(expected)
        return None if digest is None else _Counted(digest, self)

    def hashing(self, data: bytes | memoryview) -> None:
        with self._lock:
            self.hashed += len(data)
            first, self._held = not self._held, True
        if first:
            self.token.run_sync_soon(self.reached.set)
            self.gate.wait()


class _Counted:
    def __init__(self, digest: checksums.Digest, held: HeldHash) -> None:
        self._digest = digest
        self._held = held

    def update(self, data: bytes | memoryview, /) -> None:
        self._held.hashing(data)
        self._digest.update(data)

    def value(self) -> str:
        return self._digest.value()


async def run_and_cancel_when(
    reached: trio.Event,
    gate: threading.Event,
    prepared: download.Prepared,
    options: TransferOptions,
    *,
    expect_return: bool = False,
) -> tuple[trio.CancelScope, Progress, bool]:
    """Run the download, cancel its scope once `reached` is set, and only then let the held thread go on. Returns
    once every hashing thread has ended too (abandoned ones included), so that what they did can be counted, and
    whether the download had returned while the thread was still held (with `expect_return`, it is given up to
    RETURN_WAIT seconds to: its shielded cleanup, the destination's release, runs in a thread of its own)."""
    progress = download.progress_for(prepared, Progress())
    scope = trio.CancelScope()
    transfer = Transfer(options)

    async def run() -> None:
        with scope:
            await download.run(prepared, transfer, progress, threading.Event())
        returned.set()

    returned = trio.Event()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await reached.wait()
            scope.cancel()
            # Every task acts on the cancel before the held thread is let go: whatever that thread does next is
            # what the engine told it to do, not a race with the test.
            await trio.testing.wait_all_tasks_blocked()
            if expect_return:
                with trio.move_on_after(RETURN_WAIT):
                    await returned.wait()
            returned_while_held = returned.is_set()
            gate.set()
    finally:
        gate.set()
    # A hashing thread holds its verify_limiter token until it ends, abandoned or not: take them all.
    limiter = transfer.verify_limiter
    owners = [object() for _ in range(int(limiter.total_tokens))]
    for owner in owners:
        await limiter.acquire_on_behalf_of(owner)
    for owner in owners:
        limiter.release_on_behalf_of(owner)
    return scope, progress, returned_while_held


def resumable(dest: Path, source: MemorySource, chunk_size: int) -> None:
    """Leave what an interrupted run leaves: its record (written before the first byte), a complete part file and
    a manifest saying so. The next run only verifies it (reading it back)."""
    (remote,) = source.list_files()
    final = dest / remote.path
    dest.mkdir(parents=True)
    state.save_record(dest, state.Record(source=source.display, revision=source.revision, files={}))
    state.part_path(final).write_bytes(source.files[remote.path])
    state.save_manifest(final, state.Manifest(state.remote_identity(remote), chunk_size, {0}, {0}))


async def fetch(source: MemorySource, dest: Path, options: TransferOptions) -> None:
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), dest, options.chunk_size)
    await download.run(prepared, Transfer(options), download.progress_for(prepared, Progress()), threading.Event())


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.rglob("*") if p.name.endswith((".part", ".part.json")))


@pytest.mark.parametrize("when", ["verifying the whole file", "hashing chunks as they arrive"])
async def test_a_cancelled_hash_pass_stops_its_thread_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    monkeypatch.setattr(engine, "PIECE_SIZE", HASH_PIECE // 4)
    held = HeldHash()
    monkeypatch.setattr(checksums, "new_digest", held.new_digest)
    data = os.urandom(SIZE)
    source = MemorySource({"big.bin": data}, piece_size=HASH_PIECE)
    dest = tmp_path / "m"
    if when == "verifying the whole file":
        options = TransferOptions(workers=2, chunk_size=SIZE)  # one chunk, already on disk: a read-back hash
        resumable(dest, source, SIZE)
    else:
        options = TransferOptions(workers=2, chunk_size=CHUNK)  # four chunks, hashed by a follower as they land
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), dest, options.chunk_size)

    scope, progress, returned_while_held = await run_and_cancel_when(
        held.reached, held.gate, prepared, options, expect_return=when == "verifying the whole file"
    )

    assert scope.cancelled_caught
    if when == "verifying the whole file":
        # Nothing else is in flight then, so this is exact: the cancel did not wait for the hash pass. (While
        # chunks arrive, the shielded manifest flush of the cancelled run is a thread of its own to wait for.)
        assert returned_while_held
    # The hashing thread was told to stop when the cancel came: it finished the piece it held and no other
    # (without that, it hashes on to the end of its range: the whole file, or at least a chunk).
    assert held.hashed == HASH_PIECE
    assert not (dest / "big.bin").exists() and progress.files["big.bin"].state != "published"
    record = state.load_record(dest)
    assert record is None or not record.complete

    await fetch(source, dest, options)  # a retry finishes the job
    assert (dest / "big.bin").read_bytes() == data
    assert leftovers(dest) == []


async def test_a_cancel_during_the_rename_waits_for_it_and_records_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=HASH_PIECE)
    dest = tmp_path / "m"
    final = dest / "big.bin"
    reached, gate = trio.Event(), threading.Event()
    token = trio.lowlevel.current_trio_token()
    real_replace = os.replace

    def held_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == final:  # the publish; the manifests' and record's own atomic writes pass
            token.run_sync_soon(reached.set)
            gate.wait()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", held_replace)
    options = TransferOptions(workers=2, chunk_size=CHUNK)
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), dest, CHUNK)

    scope, progress, _ = await run_and_cancel_when(reached, gate, prepared, options)

    assert scope.cancelled_caught
    # Renamed, so recorded: published files and the record agree, and nothing is left beside the file.
    assert final.read_bytes() == data and progress.files["big.bin"].state == "published"
    record = state.load_record(dest)
    assert record is not None and "big.bin" in record.files and not record.complete
    assert leftovers(dest) == []
    source.reads.clear()
    await fetch(source, dest, options)  # the retry finds the file current and reads nothing
    assert source.reads == []
