"""kvcached's per-engine shared-memory segment: created by outrider for its engine, read for the KV figures AIBrix
reports, written for a KV limit.

An engine that runs kvcached (`ENABLE_KVCACHED=true`, its segment named by KVCACHED_IPC_NAME) keeps three
little-endian int64s at the start of `<shm dir>/<ipc name>`: total (the limit the allocator obeys), used and
preallocated bytes. kvcached opens the segment with O_CREAT and no O_EXCL, so it uses a file that already exists:
outrider creates the segment itself (O_EXCL, empty) before it launches the engine and records the file's
(device, inode) as the engine's claim. Every later read or write opens the name without following a link and
touches the file only when it is that very inode, so no request (an `ipc_name` naming some other file) can make
outrider read or rewrite a file it did not create for that engine; an existing file of that name is refused at
activation (409), and the segment is removed with its engine.

Until kvcached writes its figures the segment is all zeros: read as "no figures" (None), and a limit is refused
(the engine does not run kvcached, or not yet), as with no segment at all. A limit is set as kvcached's own
`update_kv_cache_limit` sets it: the first field rewritten under an exclusive flock, which the engine takes too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import time
from pathlib import Path

_LAYOUT = struct.Struct("<3q")
# The engine holds the lock only while it rewrites 24 bytes: a lock held this long means something is stuck.
LOCK_TIMEOUT = 5.0
LOCK_RETRY = 0.01

Claim = tuple[int, int]  # (st_dev, st_ino) of the segment outrider created


def claim_of(recorded: list[int] | None) -> Claim | None:
    """A record's `ipc_claim` as a Claim."""
    return (recorded[0], recorded[1]) if recorded else None


class SegmentTaken(Exception):
    """A file of that name exists already in the shm directory: not outrider's to hand to an engine."""


def segment_path(shm_dir: Path, ipc_name: str) -> Path:
    return shm_dir / ipc_name


def create(shm_dir: Path, ipc_name: str) -> Claim | None:
    """Create the empty segment for an engine about to launch; its claim, or None when there is no shm directory
    (an engine there cannot run kvcached). Raises SegmentTaken when the name exists. Blocking."""
    try:
        fd = os.open(segment_path(shm_dir, ipc_name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SegmentTaken(f"{segment_path(shm_dir, ipc_name)} exists already") from None
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return info.st_dev, info.st_ino


def exists(shm_dir: Path, ipc_name: str) -> bool:
    return os.path.lexists(segment_path(shm_dir, ipc_name))


def _open_claimed(shm_dir: Path, ipc_name: str, claim: Claim | None, flags: int) -> int | None:
    """An fd of the claimed segment, or None (no claim, no file, or a file that is not the one outrider made)."""
    if claim is None:
        return None
    try:
        fd = os.open(segment_path(shm_dir, ipc_name), flags | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone, or a symlink (ELOOP)
        return None
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != tuple(claim) or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd


def read_segment(shm_dir: Path, ipc_name: str, claim: Claim | None) -> tuple[int, int, int] | None:
    """(total, used, preallocated) bytes, or None when the engine's segment holds no figures (yet). Blocking."""
    fd = _open_claimed(shm_dir, ipc_name, claim, os.O_RDONLY)
    if fd is None:
        return None
    try:
        raw = os.pread(fd, _LAYOUT.size, 0)
    finally:
        os.close(fd)
    if len(raw) < _LAYOUT.size or raw == bytes(_LAYOUT.size):
        return None
    total, used, prealloc = _LAYOUT.unpack(raw)
    return total, used, prealloc


def write_limit(shm_dir: Path, ipc_name: str, claim: Claim | None, limit_bytes: int) -> bool:
    """Set the segment's limit; False (nothing written) when the engine's segment holds no figures. Raises
    TimeoutError when the lock stays held for LOCK_TIMEOUT. Blocking: a thread (it may wait for the lock)."""
    fd = _open_claimed(shm_dir, ipc_name, claim, os.O_RDWR)
    if fd is None:
        return False
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"kvcached segment {ipc_name} stayed locked for {LOCK_TIMEOUT:g} s") from None
                time.sleep(LOCK_RETRY)  # a thread, waiting on a lock that has no event of its own
        raw = os.pread(fd, _LAYOUT.size, 0)
        if len(raw) < _LAYOUT.size or raw == bytes(_LAYOUT.size):
            return False  # kvcached has not set the segment up: a limit written now would be overwritten
        os.pwrite(fd, struct.pack("<q", limit_bytes), 0)
    finally:
        os.close(fd)
    return True


def remove(shm_dir: Path, ipc_name: str, claim: Claim | None) -> None:
    """Remove the engine's segment, only if it is still the file outrider created. Blocking."""
    fd = _open_claimed(shm_dir, ipc_name, claim, os.O_RDONLY)
    if fd is None:
        return
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_path(shm_dir, ipc_name))
