"""The transfer engine against an in-memory store: byte-exact results, faults, resume, verification, publish."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio

from outrider.errors import SourceAccessDenied, SourceTransientError, VerificationFailed
from outrider.sources.base import Checksum
from outrider.transfer import download, engine, state, writeback
from outrider.transfer.checksums import SUPPORTED
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.lock import LOCK_NAME
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from tests.fakes.sources import MemorySource
from tests.read_backs import count_read_backs

CHUNK = 256 * 1024
PIECE = 64 * 1024
FAST = TransferOptions(workers=4, chunk_size=CHUNK, backoff_initial=0.01, backoff_max=0.05, manifest_interval=0.05)


def tree() -> dict[str, bytes]:
    rnd = os.urandom
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "model-00001-of-00002.safetensors": rnd(3 * CHUNK + 12345),
        "model-00002-of-00002.safetensors": rnd(2 * CHUNK),
        "tokenizer/tokenizer.json": rnd(1000),
        "empty.txt": b"",
    }


NO_FILTERS = Filters()


async def fetch(
    source: MemorySource, dest: Path, options: TransferOptions = FAST, filters: Filters = NO_FILTERS
) -> Progress:
    prepared = await trio.to_thread.run_sync(download.prepare, source, filters, dest, options.chunk_size)
    progress = download.progress_for(prepared, Progress())
    await download.run(prepared, Transfer(options), progress, threading.Event())
    return progress


def assert_tree(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert hashlib.sha256((dest / path).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), path
    leftovers = [p.name for p in dest.rglob("*") if p.name.endswith((".part", ".part.json", ".tmp"))]
    assert leftovers == []


def final_names(dest: Path) -> set[str]:
    """Files under their final names (part files, manifests and the destination's lock excluded)."""
    return {
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and not p.name.endswith((".part", ".part.json")) and p.name != LOCK_NAME
    }


async def test_multi_file_tree_arrives_byte_exact_with_a_record(tmp_path: Path) -> None:
    files = tree()
    source = MemorySource(files, piece_size=PIECE)
    progress = await fetch(source, tmp_path / "m")
    assert_tree(tmp_path / "m", files)
    record = json.loads((tmp_path / "m" / state.RECORD_NAME).read_text())
    assert record["complete"] is True and record["source"] == "mem://bucket/model"
    big = "model-00001-of-00002.safetensors"
    assert record["files"][big]["size"] == len(files[big])
    assert record["files"][big]["checksum"]["value"] == hashlib.sha256(files[big]).hexdigest()
    # Within a file the reads are ranged chunks, not one whole-file GET.
    expected = [(0, CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, 3 * CHUNK), (3 * CHUNK, 3 * CHUNK + 12345)]
    assert sorted(source.reads_of(big)) == expected
    assert progress.done == progress.total == sum(len(d) for d in files.values())
    assert {f.state for f in progress.files.values()} == {"published"}


async def test_asking_again_is_a_no_op_and_a_changed_file_is_fetched_again(tmp_path: Path) -> None:
    files = tree()
    source = MemorySource(files, piece_size=PIECE)
    await fetch(source, tmp_path / "m")
    source.reads.clear()
    await fetch(source, tmp_path / "m")
    assert source.reads == []
    changed = "model-00002-of-00002.safetensors"
    files[changed] = os.urandom(len(files[changed]))  # same size: only the version tells
    source.versions[changed] = "v2"
    await fetch(source, tmp_path / "m")
    assert {p for p, _, _ in source.reads} == {changed}
    assert_tree(tmp_path / "m", files)


@pytest.mark.parametrize(
    "script",
    [["fail", "fail", "fail"], ["reset"], ["reset", "fail", "reset"], ["stall"]],
    ids=["500-burst", "reset", "mixed", "stall"],
)
async def test_transient_faults_are_retried_per_chunk(tmp_path: Path, script: list[str]) -> None:
    files = tree()
    source = MemorySource(files, piece_size=PIECE)
    big = "model-00001-of-00002.safetensors"
    source.script_for[big] = collections.deque(script)
    options = TransferOptions(
        workers=2, chunk_size=CHUNK, backoff_initial=0.01, backoff_max=0.05, stall_timeout=0.3, manifest_interval=0.05
    )
    try:
        with trio.fail_after(10):  # a stall must be cut short by the watchdog, not wait out the fake's 30 s
            await fetch(source, tmp_path / "m", options)
    finally:
        source.release.set()
    assert_tree(tmp_path / "m", files)
    assert len(source.reads_of(big)) == 4 + len(script)


async def test_a_reset_resumes_from_the_byte_it_reached(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    source = MemorySource({"one.bin": data}, piece_size=PIECE)
    source.script.extend(["reset"])
    await fetch(source, tmp_path / "m")
    assert source.reads_of("one.bin") == [(0, CHUNK), (CHUNK // 2, CHUNK)]
    assert (tmp_path / "m" / "one.bin").read_bytes() == data


async def test_transient_faults_give_up_after_bounded_attempts(tmp_path: Path) -> None:
    source = MemorySource({"one.bin": os.urandom(1000)})
    source.script.extend(["fail"] * 50)
    with pytest.raises(SourceTransientError, match="giving up after 6 failed reads"):
        await fetch(source, tmp_path / "m")
    assert len(source.reads) == FAST.max_attempts
    assert not (tmp_path / "m" / "one.bin").exists()


async def test_permanent_errors_fail_fast_with_the_store_message(tmp_path: Path) -> None:
    files = tree()
    source = MemorySource(files, piece_size=PIECE)
    source.script.extend(["deny"] * 100)
    with pytest.raises(SourceAccessDenied, match="403 Forbidden"):
        await fetch(source, tmp_path / "m")
    assert len(source.reads) <= FAST.workers  # no retries of a 403
    assert final_names(tmp_path / "m") <= {state.RECORD_NAME, "empty.txt"}  # empty.txt needs no read


def _part_size(algorithm: str, part_size: int = PIECE) -> int | None:
    """A multipart ETag needs its part size; no other checksum has one."""
    return part_size if algorithm == "md5-parts" else None


@pytest.mark.parametrize("algorithm", SUPPORTED)
async def test_checksum_mismatch_fails_and_publishes_nothing(tmp_path: Path, algorithm: str) -> None:
    files = {"a.safetensors": os.urandom(3 * CHUNK), "b.json": b"{}"}
    source = MemorySource(files, piece_size=PIECE)
    parts = _part_size(algorithm)
    source.listed_checksums["a.safetensors"] = Checksum(
        algorithm, "1234" if algorithm == "crc64ecma" else "ab" * 16, parts
    )
    source.listed_checksums["b.json"] = Checksum(algorithm, "5678" if algorithm == "crc64ecma" else "cd" * 16, parts)
    with pytest.raises(VerificationFailed, match=f"{algorithm} mismatch"):
        await fetch(source, tmp_path / "m")
    assert final_names(tmp_path / "m") <= {state.RECORD_NAME}


# md5-parts twice: parts that chunks hold whole (hashed per chunk) and parts that chunks cut (hashed in file order).
@pytest.mark.parametrize(("algorithm", "part_size"), [(a, PIECE) for a in SUPPORTED] + [("md5-parts", 3 * PIECE)])
async def test_store_checksums_of_every_kind_verify(tmp_path: Path, algorithm: str, part_size: int) -> None:
    from outrider.transfer.checksums import new_digest

    files = {"multi.bin": os.urandom(3 * CHUNK + 1), "single.bin": os.urandom(1000)}
    source = MemorySource(files, piece_size=PIECE, checksum=None)
    for path, data in files.items():
        digest = new_digest(Checksum(algorithm, "", _part_size(algorithm, part_size)))
        assert digest is not None
        digest.update(data)
        source.listed_checksums[path] = Checksum(algorithm, digest.value(), _part_size(algorithm, part_size))
    await fetch(source, tmp_path / "m")
    assert_tree(tmp_path / "m", files)


async def test_short_file_on_disk_is_refused(tmp_path: Path) -> None:
    source = MemorySource({"a.bin": os.urandom(1000)})
    source.listed_sizes["a.bin"] = 1500  # the store lists more than it then serves: the read ends early
    source.checksum = None
    with pytest.raises(SourceTransientError, match="ended early"):
        await fetch(source, tmp_path / "m")
    assert not (tmp_path / "m" / "a.bin").exists()


async def refused_after_three_chunks(tmp_path: Path) -> tuple[bytes, MemorySource, TransferOptions]:
    """An 8-chunk file fetched by one worker until the store refuses the fourth chunk; the manifest stays behind."""
    data = os.urandom(8 * CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    source.script.extend(["ok"] * 3 + ["deny"])
    options = TransferOptions(workers=1, chunk_size=CHUNK, manifest_interval=60)
    with pytest.raises(SourceAccessDenied):
        await fetch(source, tmp_path / "m", options)
    return data, source, options


async def test_resume_fetches_only_missing_chunks(tmp_path: Path) -> None:
    data, source, options = await refused_after_three_chunks(tmp_path)
    manifest = json.loads((tmp_path / "m" / "big.bin.part.json").read_text())
    assert manifest["done"] == [0, 1, 2]  # saved on the way out although the interval had not come round
    source.reads.clear()
    await fetch(source, tmp_path / "m", options)
    assert source.reads_of("big.bin") == [(i * CHUNK, (i + 1) * CHUNK) for i in range(3, 8)]
    assert_tree(tmp_path / "m", {"big.bin": data})


def _rewrite(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


async def test_after_a_reboot_only_chunks_flushed_to_disk_are_trusted(tmp_path: Path) -> None:
    data, source, options = await refused_after_three_chunks(tmp_path)
    path = tmp_path / "m" / "big.bin.part.json"
    manifest = json.loads(path.read_text())
    assert manifest["durable"] == [0, 1, 2]  # the run's last flush syncs the data before recording it
    assert manifest["boot_id"] == state.boot_id() is not None
    # As if chunks 1 and 2 were recorded between two syncs, then the machine restarted.
    _rewrite(path, durable=[0], boot_id="an-earlier-boot")
    source.reads.clear()
    await fetch(source, tmp_path / "m", options)
    assert source.reads_of("big.bin") == [(i * CHUNK, (i + 1) * CHUNK) for i in range(1, 8)]
    assert_tree(tmp_path / "m", {"big.bin": data})


async def test_within_one_boot_recorded_chunks_are_trusted_without_a_sync(tmp_path: Path) -> None:
    _, source, options = await refused_after_three_chunks(tmp_path)
    _rewrite(tmp_path / "m" / "big.bin.part.json", durable=[])  # a crash (kill -9) before any sync
    source.reads.clear()
    await fetch(source, tmp_path / "m", options)
    assert source.reads_of("big.bin") == [(i * CHUNK, (i + 1) * CHUNK) for i in range(3, 8)]


def _manifest_now(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return manifest


async def manifest_on_disk(path: Path, field: str, count: int) -> dict[str, Any]:
    """The manifest at `path` as soon as its `field` lists `count` chunks."""
    with trio.fail_after(10):
        # Polling is the point: the manifest on disk is what a restarted process would read.
        while True:
            manifest = _manifest_now(path)
            if len(manifest.get(field, ())) >= count:
                return manifest
            await trio.sleep(0.01)


async def manifest_while_held_halfway(tmp_path: Path, field: str) -> dict[str, Any]:
    """Fetch an 8-chunk file from a store that hangs after 4 chunks; return the manifest on disk as soon as its
    `field` lists those 4, then let the store go on and check the file arrives whole."""
    data = os.urandom(8 * CHUNK)
    gate = threading.Event()
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    source.block_after = (4 * CHUNK, gate)
    options = TransferOptions(workers=1, chunk_size=CHUNK, manifest_interval=0.01, durable_interval=3600)
    path = tmp_path / "m" / "big.bin.part.json"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, source, tmp_path / "m", options)
        manifest = await manifest_on_disk(path, field, 4)
        gate.set()
    assert_tree(tmp_path / "m", {"big.bin": data})
    return manifest


async def test_the_periodic_record_does_not_wait_for_a_sync(tmp_path: Path) -> None:
    """Between syncs the manifest grows in `done` only; `durable` catches up at the next sync."""
    manifest = await manifest_while_held_halfway(tmp_path, "done")
    assert manifest["durable"] == []


async def test_without_a_boot_id_every_record_is_synced_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "_BOOT_ID_FILE", tmp_path / "no-such-file")
    manifest = await manifest_while_held_halfway(tmp_path, "durable")
    assert manifest["durable"] == manifest["done"]


async def test_a_record_between_syncs_keeps_what_the_last_sync_made_durable(tmp_path: Path) -> None:
    data = os.urandom(8 * CHUNK)
    first, second = threading.Event(), threading.Event()
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    source.block_after = (4 * CHUNK, first)
    options = TransferOptions(workers=1, chunk_size=CHUNK, manifest_interval=0.01, durable_interval=0.5)
    path = tmp_path / "m" / "big.bin.part.json"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, source, tmp_path / "m", options)
        await manifest_on_disk(path, "durable", 4)  # a sync came round while the store held chunk 4
        source.block_after = (6 * CHUNK, second)
        first.set()
        # Recorded by the next records, most likely before the next sync.
        manifest = await manifest_on_disk(path, "done", 6)
        second.set()
    assert set(manifest["durable"]) >= {0, 1, 2, 3}
    assert_tree(tmp_path / "m", {"big.bin": data})


async def test_resume_starts_over_when_the_remote_file_changed(tmp_path: Path) -> None:
    source = MemorySource({"big.bin": os.urandom(4 * CHUNK)}, piece_size=PIECE)
    source.script.extend(["ok", "deny"])
    options = TransferOptions(workers=1, chunk_size=CHUNK)
    with pytest.raises(SourceAccessDenied):
        await fetch(source, tmp_path / "m", options)
    source.files["big.bin"] = new = os.urandom(4 * CHUNK)
    source.versions["big.bin"] = "v2"
    source.reads.clear()
    await fetch(source, tmp_path / "m", options)
    assert len(source.reads_of("big.bin")) == 4
    assert (tmp_path / "m" / "big.bin").read_bytes() == new


async def test_cancel_stops_promptly_and_publishes_nothing_partial(tmp_path: Path) -> None:
    data = os.urandom(16 * CHUNK)
    source = MemorySource({"big.bin": data, "small.json": b"{}"}, piece_size=PIECE)
    source.script_for["big.bin"] = collections.deque(["stall"] * 4)
    stop = threading.Event()
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), tmp_path / "m", CHUNK)
    progress = download.progress_for(prepared, Progress())
    with trio.move_on_after(0.5) as scope:
        await download.run(prepared, Transfer(FAST), progress, stop)
    assert scope.cancelled_caught
    source.release.set()
    assert not (tmp_path / "m" / "big.bin").exists()


@pytest.mark.parametrize("listed_right", [True, False])
async def test_after_an_abandoned_read_the_checksum_is_computed_by_reading_back(
    tmp_path: Path, listed_right: bool
) -> None:
    data = os.urandom(CHUNK)
    source = MemorySource({"one.bin": data}, piece_size=PIECE)
    if not listed_right:
        source.listed_checksums["one.bin"] = Checksum("sha256", "0" * 64)
    source.script.append("stall")  # half the bytes, then a hang: the inline hash cannot be trusted any more
    options = TransferOptions(workers=1, chunk_size=CHUNK, stall_timeout=0.3, backoff_initial=0.01)
    try:
        if listed_right:
            await fetch(source, tmp_path / "m", options)
            assert (tmp_path / "m" / "one.bin").read_bytes() == data
        else:
            with pytest.raises(VerificationFailed):
                await fetch(source, tmp_path / "m", options)
            assert not (tmp_path / "m" / "one.bin").exists()
    finally:
        source.release.set()


async def test_verify_size_skips_content_checksums(tmp_path: Path) -> None:
    # --verify size: a listed checksum that does not match is not checked (the operator chose to save the
    # hashing); the same download fails under the default (test_checksum_mismatch_fails_and_publishes_nothing).
    files = {"a.safetensors": os.urandom(3 * CHUNK), "b.json": b"{}"}
    source = MemorySource(files, piece_size=PIECE)
    source.listed_checksums["a.safetensors"] = Checksum("md5", "ab" * 16)
    source.listed_checksums["b.json"] = Checksum("md5", "cd" * 16)
    sizes_only = dataclasses.replace(FAST, verify_checksums=False)
    await fetch(source, tmp_path / "m", options=sizes_only)
    assert_tree(tmp_path / "m", files)


def test_writeback_is_started_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.pwrite(fd, os.urandom(CHUNK), 0)
        assert writeback.available()  # Linux: the call exists here, so the test below means something
        assert writeback.start_writeback(fd, 0, CHUNK)
    finally:
        os.close(fd)
    assert not writeback.start_writeback(fd, 0, CHUNK)  # a closed descriptor: refused, never raised


async def test_each_finished_chunk_has_its_writeback_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[int, int]] = []
    real = writeback.start_writeback

    def record(fd: int, offset: int, length: int) -> bool:
        started.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(writeback, "start_writeback", record)
    data = os.urandom(4 * CHUNK + 100)
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    source.script.extend(["ok", "reset"])  # the second chunk is fetched in two attempts: still one whole range
    await fetch(source, tmp_path / "m", FAST)
    assert sorted(started) == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK), (3 * CHUNK, CHUNK), (4 * CHUNK, 100)]
    assert_tree(tmp_path / "m", {"big.bin": data})


class _WatchedLock:
    """A file's write lock that tells a waiting test when a thread stands at it (about to block, or to take it)."""

    def __init__(self, seen: threading.Condition) -> None:
        self._lock = threading.Lock()
        self._seen = seen
        self.arriving = 0

    def __enter__(self) -> bool:
        with self._seen:
            self.arriving += 1
            self._seen.notify_all()
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


async def test_one_file_is_written_by_one_thread_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first write of the file is held until a second thread shows up: either at the file's write lock (the
    lock works: it waits there) or inside the write itself (it does not). Ordered by the threads, never timed."""
    seen = threading.Condition()
    active = 0
    most = 0
    locks: list[_WatchedLock] = []

    def new_lock() -> _WatchedLock:
        lock = _WatchedLock(seen)
        locks.append(lock)
        return lock

    @dataclasses.dataclass
    class WatchedTask(engine._FileTask):
        write_lock: _WatchedLock = dataclasses.field(default_factory=new_lock)  # type: ignore[assignment]

    real = engine._pwrite_all
    held_once = False

    def tracked(fd: int, data: bytes, offset: int) -> None:
        nonlocal active, most, held_once
        with seen:
            active += 1
            most = max(most, active)
            seen.notify_all()
            if not held_once:
                held_once = True
                # This thread holds the file's lock (if there is one); 15 more chunks are queued for 8 workers,
                # so another thread comes. The timeout only turns a hang into a failure: it never decides a pass.
                arrived = seen.wait_for(lambda: active > 1 or locks[0].arriving > 1, timeout=60)
                assert arrived, "no second writer of the file arrived"
        try:
            real(fd, data, offset)
        finally:
            with seen:
                active -= 1

    monkeypatch.setattr(engine, "_FileTask", WatchedTask)
    monkeypatch.setattr(engine, "_pwrite_all", tracked)
    data = os.urandom(16 * CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    await fetch(source, tmp_path / "m", TransferOptions(workers=8, chunk_size=CHUNK))
    assert len(locks) == 1 and locks[0].arriving > 1  # the probe above met a second writer at the lock
    assert most == 1
    assert_tree(tmp_path / "m", {"big.bin": data})


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64ecma", "crc64nvme"])
async def test_crc_files_are_hashed_by_their_writers_without_reading_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    from outrider.transfer.checksums import new_digest

    read_back = count_read_backs(monkeypatch)
    data = os.urandom(5 * CHUNK + 777)
    digest = new_digest(Checksum(algorithm, ""))
    assert digest is not None
    digest.update(data)
    source = MemorySource({"big.bin": data}, piece_size=PIECE, checksum=None)
    source.listed_checksums["big.bin"] = Checksum(algorithm, digest.value())
    await fetch(source, tmp_path / "m")
    assert read_back == []
    assert_tree(tmp_path / "m", {"big.bin": data})


async def test_an_abandoned_chunk_is_hashed_again_from_the_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_back = count_read_backs(monkeypatch)
    data = os.urandom(4 * CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=PIECE, checksum=None)
    source.listed_checksums["big.bin"] = Checksum("crc32", f"{zlib.crc32(data):08x}")
    source.script.extend(["ok", "stall"])  # chunk 1 hangs halfway; its thread may still feed the chunk's CRC
    options = TransferOptions(workers=1, chunk_size=CHUNK, stall_timeout=0.3, backoff_initial=0.01)
    try:
        await fetch(source, tmp_path / "m", options)
    finally:
        source.release.set()
    assert read_back == [(CHUNK, 2 * CHUNK)]
    assert_tree(tmp_path / "m", {"big.bin": data})


async def test_resumed_chunks_are_hashed_once_from_the_part_file_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(8 * CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=PIECE, checksum=None)
    source.listed_checksums["big.bin"] = Checksum("crc32", f"{zlib.crc32(data):08x}")
    source.script.extend(["ok"] * 3 + ["deny"])
    options = TransferOptions(workers=1, chunk_size=CHUNK, manifest_interval=60)
    with pytest.raises(SourceAccessDenied):
        await fetch(source, tmp_path / "m", options)
    part = tmp_path / "m" / "big.bin.part"
    intact = part.read_bytes()
    # Damage to a finished chunk (a bad disk, another writer) while nothing ran: the resumed run must notice.
    with part.open("r+b") as fh:
        fh.seek(CHUNK + 10)
        fh.write(bytes([intact[CHUNK + 10] ^ 0xFF]))
    with pytest.raises(VerificationFailed, match="crc32 mismatch"):
        await fetch(source, tmp_path / "m", options)
    assert not (tmp_path / "m" / "big.bin").exists()

    source.script.extend(["ok"] * 3 + ["deny"])
    with pytest.raises(SourceAccessDenied):
        await fetch(source, tmp_path / "m", options)
    read_back = count_read_backs(monkeypatch)
    await fetch(source, tmp_path / "m", options)
    assert read_back == [(0, CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, 3 * CHUNK)]  # each resumed chunk once
    assert_tree(tmp_path / "m", {"big.bin": data})


async def test_a_chunk_is_resumed_from_where_its_writing_stopped(tmp_path: Path) -> None:
    """A process taking over a killed one's part file reads only the bytes the manifest does not vouch for."""
    data = os.urandom(4 * CHUNK)
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    (remote,) = source.list_files()
    final = tmp_path / "m" / "big.bin"
    final.parent.mkdir(parents=True)
    half = CHUNK + CHUNK // 2
    state.part_path(final).write_bytes(data[:half] + b"\0" * (len(data) - half))  # as the killed writer left it
    state.save_manifest(final, state.Manifest(state.remote_identity(remote), CHUNK, {0}, set(), {1: half}))
    state.save_record(final.parent, state.Record(source.display, None, {}))  # written before any part file
    await fetch(source, tmp_path / "m", TransferOptions(workers=1, chunk_size=CHUNK))
    assert sorted(start for _, start, _ in source.reads) == [half, 2 * CHUNK, 3 * CHUNK]
    assert_tree(tmp_path / "m", {"big.bin": data})  # and the resumed bytes were hashed with the rest


async def test_a_part_file_replaced_under_its_name_is_never_written_or_published(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK)
    gate = threading.Event()
    source = MemorySource({"big.bin": data}, piece_size=PIECE)
    source.block_after = (2 * CHUNK, gate)
    options = TransferOptions(workers=1, chunk_size=CHUNK, manifest_interval=0.01)
    part = tmp_path / "m" / "big.bin.part"
    errors: list[Exception] = []

    async def download_it() -> None:
        try:
            await fetch(source, tmp_path / "m", options)
        except engine.LocalIOError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(download_it)
        await manifest_on_disk(tmp_path / "m" / "big.bin.part.json", "done", 2)
        impostor = tmp_path / "impostor"
        impostor.write_bytes(b"\0" * len(data))  # what a writer outside the lock might leave
        os.replace(impostor, part)
        gate.set()
    assert len(errors) == 1 and isinstance(errors[0], engine.PartFileReplaced)
    assert not (tmp_path / "m" / "big.bin").exists()
    assert part.read_bytes() == b"\0" * len(data)  # not written into either
