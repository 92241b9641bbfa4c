"""kvcached's per-engine shared-memory segment: read for the KV figures AIBrix reports, written for a KV limit.

An engine that runs kvcached (`ENABLE_KVCACHED=true`, its segment named by KVCACHED_IPC_NAME) keeps three
little-endian int64s at the start of `<shm dir>/<ipc name>`: total (the limit the allocator obeys), used and
preallocated bytes. A limit is set as kvcached's own `update_kv_cache_limit` sets it: the first field rewritten
under an exclusive flock on the file, which the engine takes too. No segment means the engine runs without kvcached:
its KV memory is then not outrider's to read or limit, and the caller says so rather than pretend.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from pathlib import Path

_LAYOUT = struct.Struct("<3q")
# The engine holds the lock only while it rewrites 24 bytes: a lock held this long means something is stuck.
LOCK_TIMEOUT = 5.0
LOCK_RETRY = 0.01


def segment_path(shm_dir: Path, ipc_name: str) -> Path:
    return shm_dir / ipc_name


def read_segment(shm_dir: Path, ipc_name: str) -> tuple[int, int, int] | None:
    """(total, used, preallocated) bytes, or None when the engine has no segment (yet). Blocking."""
    try:
        with open(segment_path(shm_dir, ipc_name), "rb") as f:
            raw = f.read(_LAYOUT.size)
    except OSError:
        return None
    if len(raw) < _LAYOUT.size:
        return None
    total, used, prealloc = _LAYOUT.unpack(raw)
    return total, used, prealloc


def write_limit(shm_dir: Path, ipc_name: str, limit_bytes: int) -> bool:
    """Set the segment's limit; False (nothing written) when there is no segment. Raises TimeoutError when the
    lock stays held for LOCK_TIMEOUT. Blocking: a thread (it may wait for the lock)."""
    try:
        fd = os.open(segment_path(shm_dir, ipc_name), os.O_RDWR)
    except FileNotFoundError:
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
        os.pwrite(fd, struct.pack("<q", limit_bytes), 0)
    finally:
        os.close(fd)
    return True
