"""What verifying a download costs per GiB, for each checksum a store may keep, through outrider's own digests.

Usage: python bench/checksum_bench.py [--mib N]

Each algorithm hashes the same random buffer, fed in 4 MiB pieces as the verifying threads feed it, and reports
CPU-seconds per GiB (best of 3: the least disturbed by other work) and its ratio to MD5, the checksum a single-part
S3/OBS ETag gives. Peers in the same run: zlib's crc32 and crcmod's CRC-64/XZ, the libraries outrider's CRCs would
otherwise use. The order printed is the order of sources.base.VERIFY_COST, so a wrong ranking shows.
"""

from __future__ import annotations

import argparse
import os
import time
import zlib
from collections.abc import Callable

import crcmod

from outrider.sources.base import VERIFY_COST, Checksum
from outrider.transfer.checksums import new_digest

PIECE = 4 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024  # a multipart ETag's parts: the AWS CLI's and boto3's default part size


def cpu_per_gib(update: Callable[[bytes], object], pieces: list[bytes]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for piece in pieces:
            update(piece)
        best = min(best, time.process_time() - start)
    return best * (1 << 30) / sum(len(p) for p in pieces)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="buffer size (default 256 MiB)")
    args = parser.parse_args()
    buffer = os.urandom(args.mib << 20)
    data = [buffer[offset : offset + PIECE] for offset in range(0, len(buffer), PIECE)]  # cut outside the timing
    figures: dict[str, float] = {}
    for algorithm in VERIFY_COST:
        digest = new_digest(Checksum(algorithm, "", PART_SIZE if algorithm == "md5-parts" else None))
        assert digest is not None, algorithm
        figures[algorithm] = cpu_per_gib(digest.update, data)
    crc32 = 0

    def zlib_update(piece: bytes) -> None:
        nonlocal crc32
        crc32 = zlib.crc32(piece, crc32)

    figures["peer: zlib crc32"] = cpu_per_gib(zlib_update, data)
    xz = crcmod.Crc(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)
    figures["peer: crcmod crc64 (xz)"] = cpu_per_gib(xz.update, data)
    md5 = figures["md5"]
    print(f"{'checksum':24} {'CPU-s/GiB':>10} {'vs md5':>7}   ({args.mib} MiB in 4 MiB pieces, best of 3)")
    for name, seconds in figures.items():
        print(f"{name:24} {seconds:10.3f} {seconds / md5:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
