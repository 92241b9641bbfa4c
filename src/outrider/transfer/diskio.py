"""How part files are written and read back: direct I/O (O_DIRECT) where the file system takes it.

Why direct: a buffered write copies every byte into a page-cache page the kernel first has to find, and then the
publish step's fsync waits for those dirty pages to reach the disk. Profiled on the bench machine (a 2-core
Firecracker VM, bench/README.md), that copy was 60-65% of the raw client's CPU and of outrider's with sizes-only
verification, and it varied from 0.2 to 1.2 CPU-s per GiB with the VM's memory state (pages the balloon gave back
to the host fault in again). With O_DIRECT the disk reads the bytes straight from our buffer: 2 GiB took 2.05
CPU-s instead of 2.50 (medians of 3, `--verify size`) at the same MB/s, which the disk bounds either way once every
byte must be on it before publish. The bytes are on the device when the write returns, as publish needs anyway.

Not for everything: a file whose checksum is hashed by reading it back in order (md5, sha1, sha256 over several
chunks) is written through the page cache, where that read finds it; reading it back from the disk cost a second
disk pass (256 against 339 MB/s for 2 GiB with MD5).

Rules direct I/O imposes, kept here: buffers, offsets and lengths aligned to ALIGN. Buffers are page-aligned
anonymous maps, one per thread and size, reused across chunks (a fresh one per chunk would fault its pages in
every time). Writes go out in whole buffers from aligned offsets; only a file's unaligned tail is written through
an ordinary descriptor. Where O_DIRECT is refused (tmpfs, some FUSE and network file systems), files are written
and read through the page cache as before.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

# The strictest alignment block devices ask for (4Kn disks); 512-byte devices accept it too.
ALIGN = 4096
# Read-back pieces for hashing: large enough that a syscall per piece costs nothing, small enough to stay in cache.
READ_SIZE = 4 * 1024 * 1024

_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none: every file is then written buffered
_local = threading.local()


def direct_supported(path: Path) -> bool:
    """Does the file system holding `path` (an existing file) take O_DIRECT?"""
    if not _DIRECT:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


def aligned(offset: int) -> bool:
    return offset % ALIGN == 0


def buffer(size: int) -> memoryview:
    """This thread's page-aligned buffer of `size` bytes (a multiple of ALIGN), reused across calls."""
    buffers: dict[int, mmap.mmap] | None = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    if size not in buffers:
        buffers[size] = mmap.mmap(-1, size)
    return memoryview(buffers[size])


def open_part(path: Path, flags: int, direct: bool) -> int:
    return os.open(path, flags | (_DIRECT if direct else 0))


def read_back(path: Path, start: int, end: int, direct: bool, check: Callable[[], None]) -> Iterator[memoryview]:
    """Yield bytes [start, end) of the file in order, as views of this thread's read buffer (each valid until the
    next one is asked for). `start` must be aligned when `direct`. Stops early, short, if the file ends first.
    `check()` runs before each read: it raises to stop the reading (a cancel)."""
    view = buffer(READ_SIZE)
    fd = open_part(path, os.O_RDONLY, direct)
    try:
        while start < end:
            check()
            # Direct reads ask for whole aligned blocks; the file's end (or `end`) cuts the last one short.
            want = min(READ_SIZE, end - start)
            if direct:
                want = min(READ_SIZE, -(-want // ALIGN) * ALIGN)
            got = os.preadv(fd, [view[:want]], start)
            if got <= 0:
                return
            got = min(got, end - start)
            yield view[:got]
            start += got
    finally:
        os.close(fd)
