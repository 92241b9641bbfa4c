"""Content checksums the stores offer, computed incrementally over the bytes we wrote.

- md5, sha1, sha256: hex digests (S3/OBS single-part ETags, Hugging Face LFS oids, S3 additional checksums).
- crc32, crc32c, crc64nvme: S3's additional checksums, as the hex of their big-endian bytes (S3 sends base64; the
  S3 source converts). Parameters as in the CRC catalogue: CRC-32/ISO-HDLC (zlib's), CRC-32/ISCSI, CRC-64/NVME.
- md5-parts is a multipart upload's S3 ETag, `<hex>-<parts>`: the MD5 of the concatenated MD5s of its parts, all
  `part_size` bytes but the last (the S3 source finds the part size with one HEAD of part 1).
- crc64ecma is what TOS reports (`x-tos-hash-crc64ecma`, decimal): the ECMA-182 polynomial, reflected, with all-ones
  initial value and final xor (the CRC-64/XZ parameters).

Where a store keeps several checksums of one file, the cheapest is verified (sources.base.VERIFY_COST).
CRCs combine (transfer/crc.py): the chunks of one file are hashed by the threads that write them, in parallel, and
the file's CRC follows from theirs without a second pass (`chunked`, `chunk_digest`, `combined`). So do md5-parts
when every chunk starts on a part boundary: each chunk's parts are hashed by its writer. The other digests are
sequential and need the bytes in file order.

CPU-seconds per GiB measured here: fastcrc's crc32, crc32c and crc64 (xz) 0.08-0.10, against 0.45 for zlib's crc32
and 2.1 for crcmod (the table-driven C extension the TOS SDK uses, kept for crc64nvme, which fastcrc lacks); sha256
0.87, sha1 0.93, md5 1.34. fastcrc releases the GIL, so verifying threads hash in parallel with downloading ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import crcmod
import fastcrc

from outrider.sources.base import Checksum
from outrider.transfer import crc

# CRC-64/NVME's polynomial with its top term, as crcmod wants it. crcmod's `initCrc` is the register's initial
# value xor the final xor, so an all-ones start with an all-ones final xor is initCrc=0.
_CRC64_NVME_POLY = 0x1AD93D23594C93659


class _FastCrc:
    """An incremental fastcrc CRC: each of its functions takes the value so far to go on from."""

    def __init__(self, fn: Callable[..., int], digits: int) -> None:
        self._fn = fn
        self._digits = digits
        self._crc: int | None = None

    def update(self, data: bytes | memoryview, /) -> None:
        self._crc = self._fn(data) if self._crc is None else self._fn(data, self._crc)

    def crc(self) -> int:
        return self._crc if self._crc is not None else int(self._fn(b""))

    def value(self) -> str:
        return f"{self.crc():0{self._digits}x}"


class Crc64Ecma(_FastCrc):
    """Incremental CRC-64/ECMA-182 (XZ parameters); `value()` is the decimal string TOS reports."""

    def __init__(self) -> None:
        super().__init__(fastcrc.crc64.xz, 16)

    def value(self) -> str:
        return str(self.crc())


class _Crc64Nvme:
    """CRC-64/NVME through crcmod (fastcrc has no NVME variant); `value()` is its big-endian hex."""

    def __init__(self) -> None:
        self._crc = crcmod.Crc(_CRC64_NVME_POLY, initCrc=0, rev=True, xorOut=(1 << 64) - 1)

    def update(self, data: bytes | memoryview, /) -> None:
        self._crc.update(data)

    def crc(self) -> int:
        return int(self._crc.crcValue)

    def value(self) -> str:
        return f"{self.crc():016x}"


class _HexHasher:
    def __init__(self, factory: Callable[[], hashlib._Hash]) -> None:
        self._hash = factory()

    def update(self, data: bytes | memoryview, /) -> None:
        self._hash.update(data)

    def value(self) -> str:
        return self._hash.hexdigest()


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def value(self) -> str: ...


_FACTORIES: dict[str, Callable[[], Digest]] = {
    "md5": lambda: _HexHasher(lambda: hashlib.md5(usedforsecurity=False)),
    "sha1": lambda: _HexHasher(lambda: hashlib.sha1(usedforsecurity=False)),
    "sha256": lambda: _HexHasher(hashlib.sha256),
    "crc32": lambda: _FastCrc(fastcrc.crc32.iso_hdlc, 8),
    "crc32c": lambda: _FastCrc(fastcrc.crc32.iscsi, 8),
    "crc64nvme": _Crc64Nvme,
    "crc64ecma": Crc64Ecma,
}


class PartsMd5:
    """Incremental multipart ETag: an MD5 per `part_size` bytes, and the MD5 of those MD5s with the part count."""

    def __init__(self, part_size: int) -> None:
        self._part_size = part_size
        self._done: list[bytes] = []
        self._part = hashlib.md5(usedforsecurity=False)
        self._filled = 0

    def update(self, data: bytes | memoryview, /) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), self._part_size - self._filled)
            self._part.update(view[:n])
            self._filled += n
            view = view[n:]
            if self._filled == self._part_size:
                self._done.append(self._part.digest())
                self._part = hashlib.md5(usedforsecurity=False)
                self._filled = 0

    def part_digests(self) -> list[bytes]:
        """The MD5 of each part so far (the last one as far as it goes)."""
        return self._done + ([self._part.digest()] if self._filled else [])

    def value(self) -> str:
        return _parts_etag(self.part_digests())


def _parts_etag(parts: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


SUPPORTED = (*_FACTORIES, "md5-parts")

_CRC_FACTORIES: dict[str, tuple[Callable[[], Digest], crc.CrcSpec]] = {
    "crc32": (lambda: _FastCrc(fastcrc.crc32.iso_hdlc, 8), crc.CRC32),
    "crc32c": (lambda: _FastCrc(fastcrc.crc32.iscsi, 8), crc.CRC32C),
    "crc64ecma": (Crc64Ecma, crc.CRC64_XZ),
    "crc64nvme": (_Crc64Nvme, crc.CRC64_NVME),
}


def chunked(checksum: Checksum | None, chunk_size: int) -> bool:
    """Can this checksum be computed chunk by chunk of `chunk_size`, in any order, and combined? The CRCs always;
    md5-parts when every chunk starts on a part boundary (the chunk size a multiple of the part size)."""
    if checksum is None:
        return False
    if checksum.algorithm == "md5-parts":
        return bool(checksum.part_size) and chunk_size % (checksum.part_size or 1) == 0
    return checksum.algorithm in _CRC_FACTORIES


def chunk_digest(checksum: Checksum) -> Digest:
    """A fresh digest for one chunk of a file checked by `checksum` (`chunked` must hold)."""
    if checksum.algorithm == "md5-parts":
        assert checksum.part_size
        return PartsMd5(checksum.part_size)
    return _CRC_FACTORIES[checksum.algorithm][0]()


def combined(checksum: Checksum, chunks: list[tuple[Digest, int]]) -> str:
    """The file's checksum value, in the form `value()` gives, from its chunks' digests (`chunk_digest`) and
    lengths, in file order."""
    if checksum.algorithm == "md5-parts":
        return _parts_etag([part for digest, _ in chunks for part in _parts_of(digest)])
    spec = _CRC_FACTORIES[checksum.algorithm][1]
    whole = spec.combine_all([(_crc_of(digest), length) for digest, length in chunks])
    if checksum.algorithm == "crc64ecma":
        return str(whole)  # decimal, as TOS reports it (Crc64Ecma.value)
    return f"{whole:0{spec.width // 4}x}"


def new_digest(checksum: Checksum | None) -> Digest | None:
    """A fresh digest for the checksum's algorithm, or None when there is nothing we know how to verify."""
    if checksum is not None and checksum.algorithm == "md5-parts":
        return PartsMd5(checksum.part_size) if checksum.part_size else None
    if checksum is None or checksum.algorithm not in _FACTORIES:
        return None
    return _FACTORIES[checksum.algorithm]()


def matches(checksum: Checksum, computed: str) -> bool:
    """Hex digests compare case-insensitively; crc64 compares as numbers (leading zeros are not significant)."""
    if checksum.algorithm == "crc64ecma":
        try:
            return int(checksum.value) == int(computed)
        except ValueError:
            return False
    return checksum.value.strip().lower() == computed.lower()


def _crc_of(digest: Digest) -> int:
    if not isinstance(digest, _FastCrc | _Crc64Nvme):
        raise TypeError(f"not a chunk CRC: {digest!r}")
    return digest.crc()


def _parts_of(digest: Digest) -> list[bytes]:
    if not isinstance(digest, PartsMd5):
        raise TypeError(f"not a chunk's part MD5s: {digest!r}")
    return digest.part_digests()
