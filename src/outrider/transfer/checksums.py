"""Content checksums the stores offer, computed incrementally over the bytes we wrote.

crc64ecma is what TOS reports (`x-tos-hash-crc64ecma`, decimal): the ECMA-182 polynomial, reflected, with all-ones
initial value and final xor (the CRC-64/XZ parameters). crcmod's C extension computes it at several hundred MB/s;
it is the same library the TOS SDK uses, so it is installed wherever TOS is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import crcmod

from outrider.sources.base import Checksum

# ECMA-182 polynomial with its x^64 term, as crcmod wants it.
_CRC64_ECMA_POLY = 0x142F0E1EBA9EA3693


class Crc64Ecma:
    """Incremental CRC-64/ECMA-182 (XZ parameters); `value()` is the decimal string TOS reports."""

    def __init__(self) -> None:
        self._crc = crcmod.Crc(_CRC64_ECMA_POLY, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)

    def update(self, data: bytes, /) -> None:
        self._crc.update(data)

    def value(self) -> str:
        return str(self._crc.crcValue)


class _HexHasher:
    def __init__(self, factory: Callable[[], hashlib._Hash]) -> None:
        self._hash = factory()

    def update(self, data: bytes, /) -> None:
        self._hash.update(data)

    def value(self) -> str:
        return self._hash.hexdigest()


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def value(self) -> str: ...


_FACTORIES: dict[str, Callable[[], Digest]] = {
    "md5": lambda: _HexHasher(lambda: hashlib.md5(usedforsecurity=False)),
    "sha256": lambda: _HexHasher(hashlib.sha256),
    "crc64ecma": Crc64Ecma,
}

SUPPORTED = tuple(_FACTORIES)


def new_digest(checksum: Checksum | None) -> Digest | None:
    """A fresh digest for the checksum's algorithm, or None when there is nothing we know how to verify."""
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
