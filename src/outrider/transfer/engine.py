"""Chunked, parallel, resumable ranged reads into part files, then verification and atomic publish.

Every file is cut into chunks of `chunk_size` bytes. `workers` trio tasks take chunks in file order (so the first
files finish, and are published, first) and fetch each in one worker thread: the thread iterates the source's
`read_range` and `os.pwrite`s each piece (<= PIECE_SIZE) at its offset into `<file>.part`, checking a stop flag
between pieces. Memory is therefore bounded by workers x PIECE_SIZE whatever the model size.

Writes go through the page cache. O_DIRECT was measured (bench/README.md): it saved a third of the CPU (2.03
against 2.97 CPU-s for 2 GiB, sizes only) but cost 15-27% of the MB/s, since every write then waits for the disk
while the page cache lets the network run ahead of the writeback started per chunk.

Checksums are computed from the bytes as they are written, never by a pass after the download:
- a file of one chunk is hashed by the thread that writes it;
- a CRC (crc32, crc32c, crc64) is computed per chunk by the thread that writes the chunk, in parallel, and the
  file's CRC combined from the chunks' (crc.py) at the end; so is a multipart ETag (md5-parts: the MD5 of the
  parts' MD5s), each part's MD5 by the thread writing it, when the chunks are cut at part boundaries;
- the sequential digests (md5, sha1, sha256, and md5-parts cut otherwise) are computed by a follower that reads
  the file's finished prefix back as it grows, so the hashing overlaps the download.
A chunk whose hash cannot be trusted (it was resumed from an earlier run, or an abandoned thread may still have fed
it) is hashed once more from the part file before the file is verified.

Resources and errors:
- Each ranged read holds a token of the shared `limiter` (one per read in flight, across all jobs) from the trio
  side while its thread runs; an abandoned read returns its token at once. Each thread opens and closes its own
  file descriptor, so an abandoned thread can never write through a reused descriptor number.
- A `SourceTransientError` is retried for that chunk from the byte it got to, with exponential backoff and jitter,
  up to `max_attempts` failures in a row without progress. Any other `SourceError` fails the download at once.
  When the store says slow down (`SourceThrottled`: 503 SlowDown, 429), the wait is at least its Retry-After, and
  no read of the whole run starts until the wait is over.
- A read that delivers nothing for `stall_timeout` seconds is abandoned (its thread told to stop) and retried:
  stores are expected to time out their own reads, this is the backstop.
- Cancellation (trio) abandons the reading and hashing threads at once and sets their stop flags (they stop within
  a piece); no file is ever renamed to its final name before its size and (when the store offers one) checksum are
  verified. The rename itself is not abandoned: it is short, and waiting for it means a file is either renamed and
  recorded, or left as a part file for a retry.
- Each finished chunk's writeback to disk is started at once (writeback.py), so the fsync before publish is short.
- Finished chunks are recorded in the manifest every `manifest_interval` seconds. The part file's data is flushed
  to disk (fdatasync) only every `durable_interval` seconds and when the run ends: within one boot of the machine
  the page cache already keeps a killed process's writes, and only a reboot needs them on disk (see state.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

from outrider.backoff import STORE_RETRIES, Backoff, throttled_wait
from outrider.errors import (
    InsufficientStorage,
    OutriderError,
    SourceError,
    SourceThrottled,
    SourceTransientError,
    VerificationFailed,
)
from outrider.option_types import DEFAULT_CHUNK_SIZE, DEFAULT_DOWNLOAD_WORKERS
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source
from outrider.transfer import checksums, diskio, state, writeback
from outrider.transfer.paths import join_under
from outrider.transfer.progress import FileProgress, Progress

log = logging.getLogger(__name__)

# RETRY_AFTER_CAP and RETRY_AFTER_SPREAD: outrider/backoff.py, shared with the listings' and HEADs' retries.

# Verification reads whole files back and hashes them: CPU-bound, so no more of them than this at once
# (and not under the network limiter, where a hash pass would hold a ranged-read slot idle).
VERIFY_THREADS = 2


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    workers: int = DEFAULT_DOWNLOAD_WORKERS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Failures in a row (without a byte of progress) before a chunk, and so the download, gives up.
    max_attempts: int = STORE_RETRIES.attempts
    backoff_initial: float = STORE_RETRIES.initial
    backoff_max: float = STORE_RETRIES.cap
    stall_timeout: float = 120.0
    # How often finished chunks (and how far unfinished ones got) are recorded: what a takeover after a kill -9
    # fetches twice is at most this many seconds of transfer. Such a save skips the fsyncs (state.py), so it is
    # cheap; the durable one follows durable_interval.
    manifest_interval: float = 0.25
    # How often finished chunks are flushed to disk so that they survive a reboot (not only a crash of outrider).
    durable_interval: float = 30.0
    # Content checksums (MD5, sha256, CRC64) where the store offers them; sizes are checked regardless. Hashing is
    # the largest CPU cost of a download (MD5: about 1.3 CPU-seconds per GiB here), so an operator may trade it away.
    verify_checksums: bool = True


class Stopped(OutriderError):
    """The download was told to stop (cancel or shutdown) while a thread was working."""

    status = 499
    type = "cancelled"


class LocalIOError(OutriderError):
    """Writing under the destination failed (permissions, I/O error): the store is not to blame."""

    type = "local_io_error"


class PartFileReplaced(LocalIOError):
    """The part file under its name is no longer the one this download created: someone outside the destination's
    lock replaced or removed it. Nothing is verified or published from a file we did not write."""


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def local_error(exc: OSError, dest: Path) -> OutriderError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left under {dest}")
    return LocalIOError(f"writing under {dest}: {exc.strerror or exc}")


@dataclasses.dataclass(eq=False)
class _Attempt:
    """One thread's go at the rest of a chunk; the thread advances `pos`, trio may set `cancelled`."""

    pos: int
    end: int
    start: int  # where the chunk begins (`pos` may be further on, when this attempt resumes a failed one)
    index: int = 0  # the chunk's
    last_piece: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: bool = False
    scope: trio.CancelScope | None = None


@dataclasses.dataclass(eq=False)
class _FileTask:
    remote: RemoteFile
    final: Path
    manifest: state.Manifest
    chunks: list[tuple[int, int]]
    progress: FileProgress
    # Hashes the bytes as they are written when the file is one chunk fetched from its start; else None and the
    # checksum is computed by reading the finished part file back.
    digest: checksums.Digest | None
    # A file of several chunks checked by a checksum that combines (checksums.chunked): each chunk's digest, fed
    # by the thread writing it; `rehash` lists the chunks whose digest is computed from the part file instead
    # (resumed ones, and any an abandoned thread fed).
    chunk_digests: dict[int, checksums.Digest] | None = None
    rehash: set[int] = dataclasses.field(default_factory=set)
    dirty: bool = False
    # Multi-chunk files with a checksum are hashed by a follower task as their finished prefix grows, so the hash
    # pass overlaps the download instead of following it; `changed` wakes it after each finished chunk.
    changed: trio.Event = dataclasses.field(default_factory=trio.Event)
    hashed: trio.Event | None = None
    followed: checksums.Digest | None = None
    # One writer at a time per file. Buffered writes to one file serialize on its inode lock in the kernel anyway,
    # and threads waiting there spin: with this lock they sleep instead. Measured with bench/download_bench.py:
    # 12-22% less CPU per download, the same MB/s.
    write_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # The part file this run writes (device, inode): every open checks it, so that bytes are only ever written to,
    # hashed from and renamed from the file this run created or resumed.
    inode: tuple[int, int] = (0, 0)
    # Unfinished chunks: index -> offset written up to. `resume` from the manifest (where the first attempt
    # starts), `partial` as the writing threads advance it (what the manifest records).
    resume: dict[int, int] = dataclasses.field(default_factory=dict)
    partial: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def missing(self) -> list[int]:
        return [i for i in range(len(self.chunks)) if i not in self.manifest.done]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Transfer:
    """Fetches files of a source into a destination directory. One instance is shared by all jobs."""

    def __init__(
        self,
        options: TransferOptions,
        limiter: trio.CapacityLimiter | None = None,
        verify_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.options = options
        self.limiter = limiter or trio.CapacityLimiter(options.workers)
        self.verify_limiter = verify_limiter or trio.CapacityLimiter(VERIFY_THREADS)
        # Reads hold a `limiter` token from the trio side, so an abandoned (stalled) read gives its slot back at
        # once and the retry need not wait for the stuck thread. This bounds the threads themselves, stuck or not.
        self.thread_limiter = trio.CapacityLimiter(4 * options.workers + 16)

    async def fetch(
        self,
        source: Source,
        files: list[RemoteFile],
        dest: Path,
        progress: Progress,
        stop: threading.Event,
        on_published: Callable[[RemoteFile, os.stat_result], Awaitable[None]],
        *,
        workers: int | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Fetch, verify and publish `files` under `dest`; `on_published(remote, stat)` runs after each file's
        rename. The caller holds the destination (lock.py): nothing here coordinates with other processes."""
        run = _Run(self, source, dest, progress, stop, on_published, chunk_size or self.options.chunk_size)
        await run.go(files, min(workers or self.options.workers, self.options.workers))


# A dataclass for its __init__ only (it keeps the call's arguments): compared by identity, with the plain repr.
@dataclasses.dataclass(eq=False, repr=False)
class _Run:
    """One call to Transfer.fetch: its queue of chunks, its watchdog and its manifest flusher."""

    t: Transfer
    source: Source
    dest: Path
    progress: Progress
    stop: threading.Event
    on_published: Callable[[RemoteFile, os.stat_result], Awaitable[None]]
    chunk_size: int

    def __post_init__(self) -> None:
        self.opts = self.t.options
        self.tasks: list[_FileTask] = []
        self.queue: collections.deque[tuple[_FileTask, int]] = collections.deque()
        self.active: set[_Attempt] = set()
        self.error: BaseException | None = None
        # Held while manifests are written, so a file's manifest is not rewritten after its publish removed it.
        self.flush_lock = trio.Lock()
        self.scope = trio.CancelScope()  # replaced by the run's nursery scope
        # trio time before which no read starts: the store said slow down (see _hold_off).
        self.hold_until = 0.0
        self.work: trio.Nursery

    async def go(self, files: list[RemoteFile], workers: int) -> None:
        try:
            # Not abandoned on cancel: it creates part files, which a cancelled job's cleanup must find all of. It
            # checks the stop flag between files.
            self.tasks = await trio.to_thread.run_sync(self._prepare_all, files)
        except OSError as exc:
            raise local_error(exc, self.dest) from None
        except Stopped:
            await trio.lowlevel.checkpoint()  # a pending cancel wins: the job ends cancelled, not failed
            raise
        for task in self.tasks:
            self.queue.extend((task, i) for i in task.missing)
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                nursery.start_soon(self._guard, self._watchdog)
                nursery.start_soon(self._guard, self._flusher)
                async with trio.open_nursery() as work:
                    self.work = work
                    for task in self.tasks:
                        if task.hashed is not None:
                            work.start_soon(self._guard, self._follow, task)
                        if not task.missing:  # resumed with every chunk done, or an empty file
                            work.start_soon(self._guard, self._finish, task)
                    for _ in range(min(workers, len(self.queue))):
                        work.start_soon(self._guard, self._worker)
                nursery.cancel_scope.cancel()
        finally:
            # Keep what was fetched for a resume, even when cancelled (shutdown); bounded, shielded.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._flush()
        if self.error is not None:
            raise self.error

    async def _guard(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Record the first error and stop everything else, rather than raise it through an exception group."""
        try:
            await fn(*args)
        except (OutriderError, OSError) as exc:
            if self.error is None:
                self.error = local_error(exc, self.dest) if isinstance(exc, OSError) else exc
            self.scope.cancel()

    # -- preparation (thread) --------------------------------------------------------------------------------

    def _prepare_all(self, files: list[RemoteFile]) -> list[_FileTask]:
        tasks = []
        for remote in files:
            if self.stop.is_set():
                raise Stopped("download stopped")
            tasks.append(self._prepare(remote))
        return tasks

    def _prepare(self, remote: RemoteFile) -> _FileTask:
        final = join_under(self.dest, remote.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        manifest = state.load_manifest(final, remote, self.chunk_size)
        if manifest is None:
            state.remove_partial(final)
            fd = os.open(state.part_path(final), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, remote.size)  # sparse: chunks land at their offsets in any order
            finally:
                os.close(fd)
            manifest = state.Manifest(state.remote_identity(remote), self.chunk_size, set())
            state.save_manifest(final, manifest)
        chunks = state.chunk_bounds(remote.size, self.chunk_size)
        resumed = sum(end - start for i, (start, end) in enumerate(chunks) if i in manifest.done)
        resumed += sum(pos - chunks[i][0] for i, pos in manifest.partial.items())
        entry = self.progress.files.get(remote.path) or self.progress.add_file(remote.path, remote.size)
        entry.done, entry.state = resumed, "fetching"
        # One chunk (or none), fetched from its start: written in order, hashed inline.
        inline = len(chunks) <= 1 and not manifest.done and not manifest.partial
        expected = remote.checksum if self.opts.verify_checksums else None
        digest = checksums.new_digest(expected) if inline else None
        task = _FileTask(remote, final, manifest, chunks, entry, digest)
        task.inode = _inode(os.stat(state.part_path(final)))
        task.resume = dict(manifest.partial)
        task.partial = dict(manifest.partial)
        if not inline and len(chunks) > 1 and checksums.chunked(expected, self.chunk_size):
            task.chunk_digests = {}
            # Hashed once from the part file: never taken on trust (resumed, whole or in part).
            task.rehash = set(manifest.done) | set(manifest.partial)
        elif not inline and len(chunks) > 1 and checksums.new_digest(expected) is not None:
            task.hashed = trio.Event()
        return task

    # -- fetching --------------------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while self.queue:
            task, index = self.queue.popleft()
            await self._fetch_chunk(task, index)
            task.manifest.done.add(index)
            task.partial.pop(index, None)
            task.dirty = True
            task.changed.set()
            task.changed = trio.Event()
            if len(task.manifest.done) == len(task.chunks):
                self.work.start_soon(self._guard, self._finish, task)

    async def _fetch_chunk(self, task: _FileTask, index: int) -> None:
        end = task.chunks[index][1]
        pos = task.resume.get(index, task.chunks[index][0])
        if task.chunk_digests is not None and task.remote.checksum is not None:
            task.chunk_digests[index] = checksums.chunk_digest(task.remote.checksum)
        failures = 0
        while True:
            attempt = _Attempt(pos, end, task.chunks[index][0], index)
            try:
                await self._held()
                await self._run_attempt(task, attempt)
                return
            except SourceTransientError as exc:
                failures = 1 if attempt.pos > pos else failures + 1
                if failures >= self.opts.max_attempts:
                    raise SourceTransientError(
                        f"{task.remote.path}: giving up after {failures} failed reads: {exc.message}"
                    ) from None
                # Jittered: the chunks of one download fail together when the store throttles.
                delay = Backoff(self.opts.backoff_initial, self.opts.backoff_max).delay(failures)
                if isinstance(exc, SourceThrottled):
                    delay = self._hold_off(exc, delay)
                log.info("%s: %s; retrying in %.2fs", task.remote.path, exc.message, delay)
                await trio.sleep(delay)
            finally:
                attempt.cancelled = True  # whatever happened, that thread must not write any more
            pos = attempt.pos

    def _hold_off(self, exc: SourceThrottled, delay: float) -> float:
        """The store said slow down: how long this chunk waits, and the whole run with it.

        At least the Retry-After it named (capped: RETRY_AFTER_CAP), spread upwards by up to RETRY_AFTER_SPREAD so
        that the many clients it told the same thing do not all come back in the same instant. And no read of this
        run starts before then: without that, one throttled answer would meet `workers - 1` more requests from us,
        each to be throttled in turn, and N pods multiply that into a retry storm."""
        delay = throttled_wait(delay, exc.retry_after)
        self.hold_until = max(self.hold_until, trio.current_time() + delay)
        return delay

    async def _held(self) -> None:
        """Wait while the store's last slow-down holds (returns at once otherwise)."""
        if self.hold_until > trio.current_time():
            await trio.sleep_until(self.hold_until)

    async def _run_attempt(self, task: _FileTask, attempt: _Attempt) -> None:
        with trio.CancelScope() as scope:
            attempt.scope = scope
            self.active.add(attempt)
            try:
                async with self.t.limiter:
                    attempt.last_piece = time.monotonic()  # the stall clock starts with the read, not the queue
                    await trio.to_thread.run_sync(
                        self._read_into_part, task, attempt, abandon_on_cancel=True, limiter=self.t.thread_limiter
                    )
            except Stopped:
                await trio.lowlevel.checkpoint()  # a pending cancel wins over our own word for it
                raise
            finally:
                self.active.discard(attempt)
        if scope.cancelled_caught:  # only the watchdog cancels this scope
            # The abandoned thread may still feed these: verify by reading back instead.
            task.digest = None
            task.rehash.add(attempt.index)
            raise SourceTransientError(f"no data for {self.opts.stall_timeout:g}s")

    def _read_into_part(self, task: _FileTask, attempt: _Attempt) -> None:
        """Thread: read [attempt.pos, attempt.end) of the remote file into the part file at the same offsets,
        feeding each piece to the file's inline digest or the chunk's own, whichever it has."""
        if attempt.cancelled or self.stop.is_set():
            raise Stopped("download stopped")
        fd = _open_part(task, os.O_WRONLY)
        chunk_digest = task.chunk_digests.get(attempt.index) if task.chunk_digests is not None else None
        try:
            pieces: Iterator[bytes] = self.source.read_range(task.remote.path, attempt.pos, attempt.end)
        except BaseException:
            os.close(fd)
            raise
        try:
            for piece in pieces:
                if attempt.cancelled or self.stop.is_set():
                    raise Stopped("download stopped")
                if len(piece) > attempt.end - attempt.pos:
                    raise SourceError(f"{self.source.display}: {task.remote.path}: the store sent more than asked")
                with task.write_lock:
                    _pwrite_all(fd, piece, attempt.pos)
                # Only once written: a hash covers exactly [chunk start, attempt.pos), where a retry goes on from.
                if chunk_digest is not None:
                    chunk_digest.update(piece)
                if task.digest is not None:
                    task.digest.update(piece)
                attempt.pos += len(piece)
                task.partial[attempt.index] = attempt.pos  # one dict store: atomic for the flusher reading it
                attempt.last_piece = time.monotonic()
                self.progress.add(task.progress, len(piece))
            if attempt.pos == attempt.end:
                writeback.start_writeback(fd, attempt.start, attempt.end - attempt.start)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # releases the store's connection when we stop early
            os.close(fd)
        if attempt.pos != attempt.end:
            raise SourceTransientError(f"{task.remote.path}: the read ended early at byte {attempt.pos}")

    async def _watchdog(self) -> None:
        interval = min(1.0, self.opts.stall_timeout / 4)
        while True:
            await trio.sleep(interval)
            now = time.monotonic()
            for attempt in list(self.active):
                if now - attempt.last_piece > self.opts.stall_timeout and attempt.scope is not None:
                    attempt.cancelled = True
                    attempt.scope.cancel()

    # -- manifests -------------------------------------------------------------------------------------------

    async def _flusher(self) -> None:
        # Without a boot id to tell a reboot from a crash, only flushed chunks may be recorded at all.
        every_time = state.boot_id() is None
        last_durable = trio.current_time()
        while True:
            await trio.sleep(self.opts.manifest_interval)
            durable = every_time or trio.current_time() - last_durable >= self.opts.durable_interval
            await self._flush(durable=durable)
            if durable:
                last_durable = trio.current_time()

    async def _flush(self, *, durable: bool = True) -> None:
        async with self.flush_lock:
            fetching = [t for t in self.tasks if t.progress.state == "fetching"]
            if durable:
                todo = [t for t in fetching if t.dirty or t.partial or t.manifest.done - t.manifest.durable]
            else:
                todo = [t for t in fetching if t.dirty or t.partial]
            if not todo:
                return
            snapshots = []
            for task in todo:
                task.dirty = False
                done = set(task.manifest.done)
                durable_set = done if durable else set(task.manifest.durable)
                partial = {i: pos for i, pos in list(task.partial.items()) if i not in done}
                snapshots.append(
                    (task.final, dataclasses.replace(task.manifest, done=done, durable=durable_set, partial=partial))
                )
            await trio.to_thread.run_sync(_save_manifests, snapshots, durable)
            if durable:
                for task, (_, saved) in zip(todo, snapshots, strict=True):
                    task.manifest.durable |= saved.durable

    # -- verification and publish ----------------------------------------------------------------------------

    async def _follow(self, task: _FileTask) -> None:
        """Hash the file's finished prefix as it grows (reading back what the workers wrote, from page cache)."""
        assert task.hashed is not None
        digest = checksums.new_digest(task.remote.checksum)
        assert digest is not None
        index = 0
        while index < len(task.chunks):
            if index not in task.manifest.done:
                await task.changed.wait()
                continue
            last = index
            while last + 1 < len(task.chunks) and last + 1 in task.manifest.done:
                last += 1
            start, end = task.chunks[index][0], task.chunks[last][1]
            await self._hashing(functools.partial(self._hash_range, task, digest, start, end))
            index = last + 1
        task.followed = digest
        task.hashed.set()

    async def _hashing(self, fn: Callable[[threading.Event], None]) -> None:
        """Run `fn(halt)` in a verification thread that a cancel abandons at once. A hash pass can take
        seconds per GiB, and not only the job's stop flag may end it: a shutdown or a caller's cancel scope must not
        wait for it. `halt` tells the abandoned thread to stop at its next piece."""
        halt = threading.Event()
        try:
            await trio.to_thread.run_sync(fn, halt, abandon_on_cancel=True, limiter=self.t.verify_limiter)
        except Stopped:
            await trio.lowlevel.checkpoint()  # a pending cancel wins over our own word for it
            raise
        finally:
            halt.set()  # whatever happened, that thread must not go on hashing

    def _halted(self, halt: threading.Event) -> bool:
        return halt.is_set() or self.stop.is_set()

    def _hash_range(
        self, task: _FileTask, digest: checksums.Digest, start: int, end: int, halt: threading.Event
    ) -> None:
        """Thread: feed bytes [start, end) of the part file to `digest` (from the page cache, where the writes are)."""

        def check() -> None:
            if self._halted(halt):
                raise Stopped("download stopped")

        # Read-back pieces of a few MiB: a syscall per piece costs nothing, and the piece stays in the CPU's cache.
        opener = functools.partial(_open_part, task, os.O_RDONLY)
        for view in diskio.read_back(opener, start, end, PIECE_SIZE * 4, check):
            digest.update(view)
            start += len(view)
        if start < end:
            raise VerificationFailed(f"{task.remote.path}: the part file is shorter than {end} bytes")

    async def _finish(self, task: _FileTask) -> None:
        if task.hashed is not None:
            await task.hashed.wait()
        task.progress.state = "verifying"
        try:
            await self._hashing(functools.partial(self._verify, task))
        except VerificationFailed:
            # Removed from here, not by the thread: an abandoned thread must never touch the names a retry reuses.
            await trio.to_thread.run_sync(state.remove_partial, task.final)
            raise
        # Not abandoned on cancel: a rename is atomic and short, and waiting for it tells us whether it happened.
        # Once it has, the file is recorded even under a cancel (shielded), so that a retry need not fetch it again.
        published = await trio.to_thread.run_sync(self._publish, task)
        with trio.CancelScope(shield=True):
            task.progress.state = "published"
            async with self.flush_lock:
                await trio.to_thread.run_sync(_unlink_quietly, state.manifest_path(task.final))
            await self.on_published(task.remote, published)

    def _verify(self, task: _FileTask, halt: threading.Event) -> None:
        """Thread: check size and checksum of the part file and flush it to disk; raises VerificationFailed."""
        remote = task.remote
        fd = _open_part(task, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size != remote.size:
                raise VerificationFailed(f"{remote.path}: {size} bytes on disk, the store listed {remote.size}")
            if remote.checksum is not None and self.opts.verify_checksums:
                computed = self._computed(task, remote.checksum, halt)
                if computed is not None and not checksums.matches(remote.checksum, computed):
                    raise VerificationFailed(
                        f"{remote.path}: {remote.checksum.algorithm} mismatch: the store says "
                        f"{remote.checksum.value}, the bytes received give {computed}"
                    )
            if self._halted(halt):
                raise Stopped("download stopped")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _publish(self, task: _FileTask) -> os.stat_result:
        """Thread: rename the verified part file over the final name (atomic), then make the rename durable.
        Renames only the very file that was verified (its inode checked first: only this process writes under the
        destination's lock, so nothing can swap it between the check and the rename). Returns the final file's
        stat, which the record keeps to recognise it later."""
        part = state.part_path(task.final)
        if _inode(os.stat(part)) != task.inode:
            raise PartFileReplaced(f"{task.final}: the part file was replaced by another writer; not published")
        os.replace(part, task.final)
        state.fsync_dir(task.final.parent)
        published = os.stat(task.final)
        if _inode(published) != task.inode:
            raise PartFileReplaced(f"{task.final}: replaced by another writer as it was published")
        return published

    def _computed(self, task: _FileTask, expected: Checksum, halt: threading.Event) -> str | None:
        """Thread: the file's checksum as the bytes written give it; None when we cannot compute this kind."""
        digest = task.digest or task.followed
        if digest is not None:
            return digest.value()
        if task.chunk_digests is not None:
            parts: list[tuple[checksums.Digest, int]] = []
            for index, (start, end) in enumerate(task.chunks):
                chunk = task.chunk_digests.get(index)
                if chunk is None or index in task.rehash:
                    chunk = checksums.chunk_digest(expected)
                    self._hash_range(task, chunk, start, end, halt)
                parts.append((chunk, end - start))
            return checksums.combined(expected, parts)
        digest = checksums.new_digest(expected)
        if digest is None:
            return None
        self._hash_range(task, digest, 0, task.remote.size, halt)
        return digest.value()


def _open_part(task: _FileTask, flags: int) -> int:
    """Open the task's part file, refusing any other file found under its name."""
    try:
        fd = os.open(state.part_path(task.final), flags)
    except FileNotFoundError:
        raise PartFileReplaced(f"{task.final}: the part file was removed by another writer") from None
    if _inode(os.fstat(fd)) != task.inode:
        os.close(fd)
        raise PartFileReplaced(f"{task.final}: the part file was replaced by another writer")
    return fd


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _save_manifests(snapshots: list[tuple[Path, state.Manifest]], durable: bool) -> None:
    """Thread: record each file's finished chunks; when `durable`, flush its data first (never the other way round)."""
    for final, manifest in snapshots:
        try:
            fd = os.open(state.part_path(final), os.O_WRONLY)
        except FileNotFoundError:
            continue  # published (or removed) meanwhile
        try:
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        state.save_manifest(final, manifest, durable=durable)
