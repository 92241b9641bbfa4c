"""CRC combination against whole-buffer CRCs computed by other implementations (zlib, fastcrc, crcmod)."""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable

import crcmod
import fastcrc
import pytest

from outrider.transfer import crc

_NVME = crcmod.Crc(0x1AD93D23594C93659, initCrc=0, rev=True, xorOut=(1 << 64) - 1)


def _nvme(data: bytes) -> int:
    digest = _NVME.new()
    digest.update(data)
    return int(digest.crcValue)


REFERENCES: dict[str, tuple[crc.CrcSpec, Callable[[bytes], int]]] = {
    "crc32 (zlib)": (crc.CRC32, zlib.crc32),
    "crc32 (fastcrc)": (crc.CRC32, fastcrc.crc32.iso_hdlc),
    "crc32c (fastcrc)": (crc.CRC32C, fastcrc.crc32.iscsi),
    "crc64 xz (fastcrc)": (crc.CRC64_XZ, fastcrc.crc64.xz),
    "crc64 nvme (crcmod)": (crc.CRC64_NVME, _nvme),
}


@pytest.mark.parametrize("name", REFERENCES)
def test_combined_chunk_crcs_equal_the_crc_of_the_whole(name: str) -> None:
    spec, whole = REFERENCES[name]
    rnd = random.Random(name)
    for _ in range(20):
        data = rnd.randbytes(rnd.randrange(0, 300_000))
        cuts = sorted(rnd.sample(range(len(data) + 1), rnd.randrange(0, 6)))
        bounds = [0, *cuts, len(data)]
        parts = [(whole(data[a:b]), b - a) for a, b in itertools.pairwise(bounds)]
        assert spec.combine_all(parts) == whole(data)


@pytest.mark.parametrize("name", REFERENCES)
def test_combine_of_two_matches_and_an_empty_tail_changes_nothing(name: str) -> None:
    spec, whole = REFERENCES[name]
    a, b = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(12345)
    assert spec.combine(whole(a), whole(b), len(b)) == whole(a + b)
    assert spec.combine(whole(a), whole(b""), 0) == whole(a)
    assert spec.combine_all([]) == whole(b"")


def test_catalogue_check_values() -> None:
    # "123456789" through the parts, as the CRC catalogue lists each algorithm's check value.
    check = b"123456789"
    expected = {crc.CRC32: 0xCBF43926, crc.CRC32C: 0xE3069283, crc.CRC64_XZ: 0x995DC9BBDF1939FA}
    expected[crc.CRC64_NVME] = 0xAE8B14860A799888
    for spec, value in expected.items():
        _, whole = next(ref for ref in REFERENCES.values() if ref[0] == spec)
        parts = [(whole(check[:4]), 4), (whole(check[4:]), 5)]
        assert spec.combine_all(parts) == value
