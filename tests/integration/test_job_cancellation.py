"""Download jobs and the callers that wait for them: a LoRA fetch's job ends with its last waiter.

The store is in memory; reads block on an event the test holds, and each step waits for an event (a read started,
a joining request closed its own copy of the source) or for every task to be blocked, never for the wall clock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.errors import OutriderError, VerificationFailed
from outrider.sources.base import Checksum, RemoteFile, Source
from outrider.transfer import engine, state
from outrider.transfer.engine import TransferOptions
from outrider.transfer.jobs import DownloadRequest, JobManager
from outrider.transfer.lock import LOCK_NAME
from outrider.transfer.settings import DownloadSettings
from tests.fakes.sources import MemorySource

CHUNK = 256 * 1024
PIECE = 64 * 1024
SOURCE = "mem://loras/a"
FILES = {"adapter_config.json": b"{}", "adapter_model.safetensors": os.urandom(2 * CHUNK)}


class Store:
    """Opens a new source per request, as the real opener does; all of them read the same files."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.gate = threading.Event()  # reads wait for it
        self.reading = trio.Event()  # a read has started (and waits for the gate)
        self.closed = trio.Event()  # a source was closed: a joining request let go of its own copy
        self.reads_cut_short = 0
        self._lock = threading.Lock()

    def open(self, source: str, config: Mapping[str, object] | None) -> Source:
        return GatedSource(self)

    def expect_close(self) -> trio.Event:
        self.closed = trio.Event()
        return self.closed

    def note_close(self) -> None:
        self.token.run_sync_soon(self.closed.set)

    def note_read(self) -> None:
        self.token.run_sync_soon(self.reading.set)


class GatedSource(MemorySource):
    def __init__(self, store: Store) -> None:
        super().__init__(dict(FILES), display=SOURCE, piece_size=PIECE)
        self.store = store

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        store = self.store
        store.note_read()
        store.gate.wait()
        pos = start
        try:
            while pos < end:
                yield self.files[path][pos : pos + PIECE]
                pos += min(PIECE, end - pos)
        finally:
            if pos < end:  # closed early: the engine stopped taking pieces
                with store._lock:
                    store.reads_cut_short += 1

    def close(self) -> None:
        super().close()
        self.store.note_close()


def manager_for(store: Store, root: Path) -> JobManager:
    return JobManager(DownloadSettings(model_root=str(root)), store.open, options=TransferOptions(chunk_size=CHUNK))


async def threads_ended(manager: JobManager) -> None:
    """Wait until every reading thread has ended, abandoned ones included: each holds a thread_limiter token."""
    limiter = manager.transfer.thread_limiter
    owners = [object() for _ in range(int(limiter.total_tokens))]
    for owner in owners:
        await limiter.acquire_on_behalf_of(owner)
    for owner in owners:
        limiter.release_on_behalf_of(owner)


class Waiter:
    """One `fetch` caller, in a cancel scope of its own; `ended` is set when its call is over, whatever the end."""

    def __init__(self, manager: JobManager, dest: Path) -> None:
        self.manager = manager
        self.dest = dest
        self.scope = trio.CancelScope()
        self.ended = trio.Event()
        self.result: Path | None = None

    async def run(self) -> None:
        try:
            with self.scope:
                self.result = await self.manager.fetch(SOURCE, None, self.dest)
        finally:
            self.ended.set()

    async def cancel(self) -> None:
        self.scope.cancel()
        await self.ended.wait()
        assert self.scope.cancelled_caught and self.result is None


async def test_a_fetch_job_runs_while_a_waiter_remains_and_is_cancelled_with_the_last(tmp_path: Path) -> None:
    store = Store()
    manager = manager_for(store, tmp_path)
    dest = tmp_path / "a"
    first, second = Waiter(manager, dest), Waiter(manager, dest)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            nursery.start_soon(first.run)
            await store.reading.wait()  # the job runs; its worker is inside a read
            (job,) = manager.list()
            joined = store.expect_close()
            nursery.start_soon(second.run)
            await joined.wait()  # the second caller joined the job (and closed the source it opened)
            assert manager.list() == [job]

            await first.cancel()
            assert job.active and not job.cancel_scope.cancel_called and not job.stop.is_set()  # one still waits

            await second.cancel()
            assert job.cancel_scope.cancel_called and job.stop.is_set()  # nobody waits: the job is cancelled
            await job.done.wait()
            assert job.state == "cancelled" and job.cancel_scope.cancelled_caught

            store.gate.set()
            await threads_ended(manager)
            # Its worker stopped at the first piece it was given: nothing written, nothing left under dest.
            assert store.reads_cut_short >= 1 and job.progress.fetched == 0
            assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == [state.RECORD_NAME, LOCK_NAME]
            nursery.cancel_scope.cancel()
        finally:
            store.gate.set()  # inside: a failed assertion must not leave the nursery waiting on it


@pytest.mark.parametrize("submitted", ["before the fetch", "after the fetch"])
async def test_a_job_someone_submitted_outlives_its_fetch_waiters(tmp_path: Path, submitted: str) -> None:
    store = Store()
    manager = manager_for(store, tmp_path)
    dest = tmp_path / "a"
    waiter = Waiter(manager, dest)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            request = DownloadRequest(source=SOURCE, dest=dest)
            if submitted == "before the fetch":
                job = await manager.submit(request)  # an async HTTP download: nobody waits for it
                joined = store.expect_close()
                nursery.start_soon(waiter.run)
                await joined.wait()
            else:
                nursery.start_soon(waiter.run)
                await store.reading.wait()
                (job,) = manager.list()
                assert await manager.submit(request) is job  # a request joins the fetch's job
            await waiter.cancel()
            assert job.active and not job.cancel_scope.cancel_called

            store.gate.set()
            await job.done.wait()
            assert job.state == "completed"
            assert (dest / "adapter_model.safetensors").read_bytes() == FILES["adapter_model.safetensors"]
            nursery.cancel_scope.cancel()
        finally:
            store.gate.set()  # inside: a failed assertion must not leave the nursery waiting on it


async def test_a_fetch_that_joins_a_job_its_waiters_left_starts_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first job is held while it prepares its part files (a step that is not abandoned), so it is still
    # active, though cancelled, when the second fetch comes and joins it.
    store = Store()
    store.gate.set()
    preparing, prepare_gate = trio.Event(), threading.Event()
    real_prepare = engine._Run._prepare_all
    calls = 0

    def held_prepare(run: engine._Run, files: list[RemoteFile]) -> list[engine._FileTask]:
        nonlocal calls
        calls += 1
        if calls == 1:
            store.token.run_sync_soon(preparing.set)
            prepare_gate.wait()
        return real_prepare(run, files)

    monkeypatch.setattr(engine._Run, "_prepare_all", held_prepare)
    manager = manager_for(store, tmp_path)
    dest = tmp_path / "a"
    first, second = Waiter(manager, dest), Waiter(manager, dest)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            nursery.start_soon(first.run)
            await preparing.wait()
            (old,) = manager.list()
            await first.cancel()
            assert old.cancel_scope.cancel_called and old.active  # cancelled, but still preparing

            joined = store.expect_close()
            nursery.start_soon(second.run)
            await joined.wait()  # the second fetch joined the cancelled job
            prepare_gate.set()
            await second.ended.wait()
            assert old.state == "cancelled"
            assert second.result == dest
            assert [j.state for j in manager.list() if j is not old] == ["completed"]
            assert (dest / "adapter_model.safetensors").read_bytes() == FILES["adapter_model.safetensors"]
            nursery.cancel_scope.cancel()
        finally:
            prepare_gate.set()  # inside: a failed assertion must not leave the nursery waiting on it


async def test_a_fetch_that_completes_leaves_no_waiter_behind(tmp_path: Path) -> None:
    store = Store()
    store.gate.set()
    manager = manager_for(store, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        assert await manager.fetch(SOURCE, None, tmp_path / "a") == tmp_path / "a"
        (job,) = manager.list()
        assert job.state == "completed" and job.waiters == 0
        nursery.cancel_scope.cancel()


async def test_every_waiter_of_a_failed_job_gets_an_error_of_its_own(tmp_path: Path) -> None:
    """One exception object raised in several tasks splices their tracebacks, and a caller renaming its field (the
    lifecycle calls `source` artifact_url) would rename it for the job too, as GET /v1/downloads then showed."""
    store = Store()
    opened: list[GatedSource] = []

    def open_wrong(source: str, config: Mapping[str, object] | None) -> Source:
        wrong = GatedSource(store)
        wrong.listed_checksums["adapter_model.safetensors"] = Checksum("sha256", "0" * 64)
        opened.append(wrong)
        return wrong

    manager = JobManager(
        DownloadSettings(model_root=str(tmp_path)), open_wrong, options=TransferOptions(chunk_size=CHUNK)
    )
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await manager.fetch(SOURCE, None, tmp_path / "a")
        except OutriderError as exc:
            errors.append(exc)
            exc.field = "artifact_url"  # what a caller naming its own field could do with what it was handed

    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        try:
            nursery.start_soon(wait)
            await store.reading.wait()
            joined = store.expect_close()
            nursery.start_soon(wait)
            await joined.wait()  # the second waiter joined the job
            (job,) = manager.list()
            store.gate.set()
            await job.done.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert job.state == "failed" and isinstance(job.error, VerificationFailed)
            assert len(errors) == 2 and errors[0] is not errors[1]
            assert all(e is not job.error and isinstance(e, VerificationFailed) for e in errors)
            assert "field" not in job.to_json()["error"]  # the job's own error is as the download engine made it
            nursery.cancel_scope.cancel()
        finally:
            store.gate.set()
