"""The CRC of a whole file from the CRCs of its chunks, so that chunks hashed in parallel need no second pass.

A CRC is linear over GF(2). For the reflected CRCs stores keep (CRC-32, CRC-32C, CRC-64/XZ, CRC-64/NVME), let R be
the register after some bytes. Feeding n more bytes B turns R into R * x^(8n) + r(B) (mod P), where r(B) is the
register those bytes leave when started from zero. With an initial register `init` and a final xor `xorout`,
crc(B) = init * x^(8n) + r(B) + xorout, so the register after A is crc(A) + xorout, and

    crc(A || B) = (crc(A) + xorout + init) * x^(8n) + crc(B)        (all additions are xor)

The one costly part is x^(8n) mod P, found by squaring in log2(n) steps: a combine costs microseconds, whatever
the chunk's size.

Bit order: these CRCs are reflected, so a register's most significant bit holds the coefficient of x^0 and its
least significant bit that of x^(width-1); `poly` is P without its x^width term, in the same order.
"""

from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class CrcSpec:
    """A reflected CRC's parameters, as the CRC catalogue gives them (poly here already reflected)."""

    width: int
    poly: int
    init: int
    xorout: int

    @property
    def _one(self) -> int:
        return 1 << (self.width - 1)  # the polynomial 1 (x^0), in reflected order

    def multiply(self, a: int, b: int) -> int:
        """a(x) * b(x) mod P: the sum of b * x^i over the terms x^i of a."""
        product = 0
        term = self._one
        while a:
            if a & term:
                product ^= b
                a ^= term
            term >>= 1
            # b * x: one step towards higher powers is one bit to the right; x^width reduces to poly.
            b = (b >> 1) ^ self.poly if b & 1 else b >> 1
        return product

    @functools.lru_cache(maxsize=64)  # noqa: B019 - the specs are a handful of module constants, never freed
    def shift(self, length: int) -> int:
        """x^(8 * length) mod P: what a register is multiplied by when `length` more bytes pass through it."""
        result = self._one
        square = self._one >> 8  # x^8: one byte
        while length:
            if length & 1:
                result = self.multiply(result, square)
            length >>= 1
            if length:
                square = self.multiply(square, square)
        return result

    def combine(self, crc_a: int, crc_b: int, length_b: int) -> int:
        """The CRC of A followed by B, from the CRC of A, the CRC of B and B's length in bytes."""
        start = crc_a ^ self.xorout ^ self.init
        return self.multiply(start, self.shift(length_b)) ^ crc_b

    def combine_all(self, parts: list[tuple[int, int]]) -> int:
        """The CRC of consecutive parts, each given as (its CRC, its length in bytes)."""
        total = self.init ^ self.xorout  # the CRC of no bytes at all
        for crc, length in parts:
            total = self.combine(total, crc, length)
        return total


_ALL_ONES_32 = (1 << 32) - 1
_ALL_ONES_64 = (1 << 64) - 1
# Catalogue names: CRC-32/ISO-HDLC (zlib's), CRC-32/ISCSI (CRC32C), CRC-64/XZ (TOS's ECMA-182), CRC-64/NVME.
CRC32 = CrcSpec(32, 0xEDB88320, _ALL_ONES_32, _ALL_ONES_32)
CRC32C = CrcSpec(32, 0x82F63B78, _ALL_ONES_32, _ALL_ONES_32)
CRC64_XZ = CrcSpec(64, 0xC96C5795D7870F42, _ALL_ONES_64, _ALL_ONES_64)
CRC64_NVME = CrcSpec(64, 0x9A6C9329AC4BC9B5, _ALL_ONES_64, _ALL_ONES_64)
