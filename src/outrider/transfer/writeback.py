"""Starting the kernel's writeback of a finished range early, without waiting for it (Linux `sync_file_range`).

Why: a download writes faster than dirty pages reach the disk, and the publish step must fsync each file before
its rename (a power loss must not leave a renamed file with holes). Left to the kernel, the writeback of a large
file starts late and that fsync then waits for most of it: with a 2 GiB file the final fsync was the single
largest cost after the network (bench/download_bench.py). Asking for writeback as each chunk finishes keeps the
disk busy during the download, so the fsync finds little left. It is a hint: errors are ignored, and where the
call does not exist (not Linux) nothing happens and the fsync does all the work, as before.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait

_Call = Callable[[int, int, int, int], int]


def _load() -> _Call | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    call: _Call = function
    return call


_sync_file_range = _load()


def available() -> bool:
    return _sync_file_range is not None


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing `length` bytes of `fd` at `offset` to disk. True if it accepted."""
    if _sync_file_range is None or length <= 0:
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
