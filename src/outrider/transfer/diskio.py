"""Reading part files back for hashing, into a buffer each thread keeps rather than a new one per read.

A follower hashing a multi-GiB file reads it back in pieces of a few MiB; `os.pread` would allocate a fresh object
for each, and fresh memory has to be faulted in page by page (on the bench's VM, expensively: see
bench/README.md). A page-aligned anonymous map per thread, filled with `os.preadv`, is allocated once.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Iterator

_local = threading.local()


def buffer(size: int) -> memoryview:
    """This thread's buffer of `size` bytes, reused across calls."""
    buffers: dict[int, mmap.mmap] | None = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    if size not in buffers:
        buffers[size] = mmap.mmap(-1, size)
    return memoryview(buffers[size])


def read_back(
    open_file: Callable[[], int], start: int, end: int, piece: int, check: Callable[[], None]
) -> Iterator[memoryview]:
    """Yield bytes [start, end) of the file `open_file()` opens (a descriptor this closes), in order, at most
    `piece` at a time, as views of this thread's buffer (each valid until the next one is asked for). Stops early,
    short, if the file ends first. `check()` runs before each read: it raises to stop the reading (a cancel)."""
    view = buffer(piece)
    fd = open_file()
    try:
        while start < end:
            check()
            got = os.preadv(fd, [view[: min(piece, end - start)]], start)
            if got <= 0:
                return
            yield view[:got]
            start += got
    finally:
        os.close(fd)
