"""The one interface every store implements: list a root, read a byte range of a file.

A `Source` is one model or adapter: a bucket and prefix, a Hugging Face repo at a revision, or a directory on a
mounted volume. The transfer engine never asks which store it is talking to.

Contract:
- Every method blocks; the transfer engine calls them from worker threads (under one shared CapacityLimiter),
  several at once, so an implementation must be thread-safe (one SDK client shared, or one per thread).
- `read_range` yields the bytes in pieces of at most `PIECE_SIZE`, never a whole chunk at once, so memory stays
  bounded by workers x piece size whatever the file size. A caller may stop iterating early (cancel): the
  generator's cleanup (`finally`) must release the connection.
- Failures are `outrider.errors.SourceError` subclasses: `SourceTransientError` for what a retry may fix (reset
  connection, 5xx, timeout, throttling), `SourceNotFound` / `SourceAccessDenied` / `InvalidSource` for what it will
  not. Messages carry the store's own words and never a credential.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator

# Bytes per piece yielded by read_range: small enough that workers x pieces in flight stays a few MiB,
# large enough that per-piece overhead (a Python loop turn, a pwrite) is negligible.
PIECE_SIZE = 1024 * 1024


# Checksum algorithms a store may offer, cheapest to verify first (CPU-seconds per GiB, measured here: the fastcrc
# CRCs 0.08-0.10, sha256 0.87, sha1 0.93, md5 1.34, crcmod's crc64nvme 2.1). A store holding several for one
# object offers the cheapest; transfer/checksums.py computes each. md5-parts (a multipart upload's ETag: the MD5
# of its parts' MD5s) costs what md5 costs, but its parts can be hashed in parallel.
VERIFY_COST = ("crc32", "crc32c", "crc64ecma", "sha256", "sha1", "md5", "md5-parts", "crc64nvme")


@dataclasses.dataclass(frozen=True)
class Checksum:
    """A content checksum the store offers: `algorithm` from VERIFY_COST; `value` in hex, except crc64ecma's, which
    is decimal (as TOS reports it), and md5-parts', which is the ETag as S3 gives it (`<hex>-<parts>`), with
    `part_size` the size of every part but the last."""

    algorithm: str
    value: str
    part_size: int | None = None


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the source root, '/'-separated, no leading '/', no '.' or '..' parts
    size: int
    checksum: Checksum | None = None
    version: str | None = None  # changes when the remote content changes (ETag, LFS oid, mtime+size, ...)


class Source(abc.ABC):
    #: The source as given, with any credential removed: safe for logs, errors and job records.
    display: str
    #: What was resolved for this download (a Hugging Face commit, else None); recorded beside the files.
    revision: str | None = None

    @abc.abstractmethod
    def list_files(self) -> list[RemoteFile]:
        """Every file under the root (recursively), with sizes. Raises SourceNotFound for a missing root."""

    @abc.abstractmethod
    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes [start, end) of `path` (end exclusive) in pieces of at most PIECE_SIZE."""

    def close(self) -> None:  # noqa: B027 - optional hook; most sources hold nothing to release
        """Release clients and connections."""
