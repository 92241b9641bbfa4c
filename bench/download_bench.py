"""Model download throughput: outrider against AIBrix's downloader, boto3 and a raw ranged client, on one local S3.

The server is s3rver (npm; installed on first use into --s3rver-dir): unlike moto it does not re-read the whole
object for every ranged GET, so it is not the bottleneck. It answers `Range: bytes=0-0` with the whole object, so
the bench checks ranged lengths before it starts and keeps every file size a multiple of 1 MiB.

Datasets: one 2 GiB file, and a tree of 8 x 256 MiB (with --quick: 512 MiB and 8 x 64 MiB). Contenders, each a
child process measured with wait4 (wall time, user+system CPU seconds, peak RSS):
- outrider: `python -m outrider download s3://bench/<set> DEST` (8 workers, 16 MiB chunks, MD5-verified, fsync'd);
- outrider-size: the same with `--verify size` (sizes only, as the raw client and boto3 check);
- aibrix: `aibrix_download --model-uri s3://bench/<set> --local-dir DEST` (needs --aibrix-python);
- boto3: `download_file` per file with TransferConfig(max_concurrency=8);
- raw: boto3 `get_object` with `Range` in 8 threads, 1 MiB reads, `os.pwrite` at each offset: the ceiling;
- raw+fsync: the same, then an fsync of each file: what the raw client costs once its files are on disk, as
  outrider's are before it publishes them (a peer for the durability, not one of the issue's goals).
Runs are interleaved (round-robin, order rotated each round), destinations removed and `sync`ed between runs.
The disk under this machine varies (a 2 GiB dd with fdatasync took 1.3 s to 5.7 s minutes apart), so the report
gives each contender's slowest and fastest run beside the median.
Goals printed as met / not met: outrider >= 95% of raw MB/s on both sets, >= 2x AIBrix, CPU <= 1.2x raw, RSS < 200 MiB.

    python bench/download_bench.py [--aibrix-python PY] [--rounds 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BUCKET = "bench"
KEYS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_REGION": "us-east-1"}

_RAW = textwrap.dedent(
    """
    import os, sys, boto3
    from concurrent.futures import ThreadPoolExecutor
    endpoint, bucket, prefix, dest = sys.argv[1:5]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    objs = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    jobs = []
    for o in objs:
        path = os.path.join(dest, o["Key"][len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(o["Size"])
        jobs += [(o["Key"], path, s, min(s + (16 << 20), o["Size"])) for s in range(0, o["Size"], 16 << 20)]
    def get(job):
        key, path, start, end = job
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        fd = os.open(path, os.O_WRONLY)
        try:
            while True:
                piece = body.read(1 << 20)
                if not piece:
                    break
                os.pwrite(fd, piece, start)
                start += len(piece)
        finally:
            os.close(fd)
        assert start == end, (key, start, end)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, jobs))
    """
)

_RAW_FSYNC = _RAW + textwrap.dedent(
    """
    for o in objs:
        fd = os.open(os.path.join(dest, o["Key"][len(prefix) + 1:]), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    """
)

_BOTO3 = textwrap.dedent(
    """
    import os, sys, boto3
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
    endpoint, bucket, prefix, dest = sys.argv[1:5]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    config = TransferConfig(max_concurrency=8, multipart_chunksize=16 << 20)
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        path = os.path.join(dest, o["Key"][len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o["Key"], path, Config=config)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_s3rver(directory: Path) -> Path:
    binary = directory / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "s3rver@3"], cwd=directory, check=True)
    return binary


def start_s3rver(binary: Path, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent", "--configure-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("s3rver did not start within 30 s")


_UPLOAD = textwrap.dedent(
    """
    import json, os, sys, boto3
    from boto3.s3.transfer import TransferConfig
    endpoint, bucket, scratch, datasets = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    s3 = boto3.client("s3", endpoint_url=endpoint)
    single = TransferConfig(multipart_threshold=8 << 30)  # one PUT per object: the ETag is then the MD5
    for name, files in datasets.items():
        for key, size in files:
            src = os.path.join(scratch, "upload.bin")
            with open(src, "wb") as f:
                for _ in range(size // (64 << 20)):
                    f.write(os.urandom(64 << 20))
                f.write(os.urandom(size % (64 << 20)))
            s3.upload_file(src, bucket, f"{name}/{key}", Config=single)
            os.unlink(src)
    # s3rver's ranged answers, checked rather than assumed.
    name = next(iter(datasets))
    key = f"{name}/{datasets[name][0][0]}"
    two = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-1")["ContentLength"]
    one = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["ContentLength"]
    if two != 2:
        sys.exit(f"s3rver answered bytes=0-1 with {two} bytes: ranged reads are broken")
    print(f"s3rver ranges: bytes=0-1 -> {two} bytes, bytes=0-0 -> {one} bytes (sizes here avoid 1-byte tails)")
    """
)


def upload(endpoint: str, datasets: dict[str, list[tuple[str, int]]], scratch: Path, env: dict[str, str]) -> None:
    """In a child process: the bench's own RSS is every child's floor (Linux keeps ru_maxrss across exec)."""
    argv = [sys.executable, "-c", _UPLOAD, endpoint, BUCKET, str(scratch), json.dumps(datasets)]
    subprocess.run(argv, env=env, check=True)


def measure(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {proc.returncode}: {err[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def contenders(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "outrider": lambda ds, dest: [sys.executable, "-m", "outrider", "download", f"s3://{BUCKET}/{ds}", dest],
        # Sizes only, as the raw client and boto3 check: the same work as theirs, for a like-for-like figure.
        "outrider-size": lambda ds, dest: [
            *(sys.executable, "-m", "outrider", "download", "--verify", "size", f"s3://{BUCKET}/{ds}", dest)
        ],
        "boto3": lambda ds, dest: [sys.executable, "-c", _BOTO3, endpoint, BUCKET, ds, dest],
        "raw": lambda ds, dest: [sys.executable, "-c", _RAW, endpoint, BUCKET, ds, dest],
        "raw+fsync": lambda ds, dest: [sys.executable, "-c", _RAW_FSYNC, endpoint, BUCKET, ds, dest],
    }
    if args.aibrix_python:
        tool = str(Path(args.aibrix_python).parent / "aibrix_download")
        out["aibrix"] = lambda ds, dest: [tool, "--model-uri", f"s3://{BUCKET}/{ds}", "--local-dir", dest]
    return out


def check_sizes(dest: Path, files: list[tuple[str, int]]) -> None:
    for key, size in files:
        found = [p for p in dest.rglob(Path(key).name) if p.is_file()]
        if not found or found[0].stat().st_size != size:
            raise RuntimeError(f"{key}: missing or wrong size under {dest}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aibrix-python", help="python of a venv with `aibrix` installed (bench/install_aibrix.sh)")
    parser.add_argument("--s3rver-dir", default=str(ROOT / ".nox" / "_s3rver"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller datasets (512 MiB, 8 x 64 MiB), 1 round")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--scratch", help="directory for data and downloads (default: a temporary one)")
    args = parser.parse_args()
    big, shard = (512 * MIB, 64 * MIB) if args.quick else (2048 * MIB, 256 * MIB)
    rounds = 1 if args.quick else args.rounds
    datasets = {
        "single": [("model.safetensors", big)],
        "tree": [(f"model-{i + 1:05d}-of-00008.safetensors", shard) for i in range(8)],
    }
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="outrider-dlbench-"))
    server, endpoint = start_s3rver(ensure_s3rver(Path(args.s3rver_dir)), scratch / "s3rver")
    env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL": endpoint}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        upload(endpoint, datasets, scratch, env)
        runners = contenders(args, endpoint)
        names = list(runners)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for ds, files in datasets.items():
                for name in order:
                    dest = scratch / "dest" / name
                    shutil.rmtree(dest, ignore_errors=True)
                    os.sync()
                    m = measure(runners[name](ds, str(dest)), env)
                    check_sizes(dest, files)
                    m["mb_s"] = sum(s for _, s in files) / 1e6 / m["wall"]
                    results.setdefault(name, {}).setdefault(ds, []).append(m)
                    print(
                        f"round {r + 1} {ds:6} {name:13} {m['mb_s']:8.1f} MB/s  cpu {m['cpu']:6.2f}s  "
                        f"rss {m['rss_mib']:6.1f} MiB"
                    )
                    shutil.rmtree(dest, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(10)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    def med(name: str, ds: str, key: str) -> float:
        return statistics.median(m[key] for m in results[name][ds])

    print(
        f"\n{'set':6} {'who':13} {'MB/s':>8} {'min-max MB/s':>13} {'CPU s':>7} {'RSS MiB':>8} "
        f"{'MB/s/raw':>8} {'CPU/raw':>7}  (medians; RSS the peak)"
    )
    for ds in ("single", "tree"):
        for name in results:
            runs = [m["mb_s"] for m in results[name][ds]]
            print(
                f"{ds:6} {name:13} {med(name, ds, 'mb_s'):8.1f} {f'{min(runs):.0f}-{max(runs):.0f}':>13} "
                f"{med(name, ds, 'cpu'):7.2f} {max(m['rss_mib'] for m in results[name][ds]):8.1f} "
                f"{med(name, ds, 'mb_s') / med('raw', ds, 'mb_s'):8.2f} "
                f"{med(name, ds, 'cpu') / med('raw', ds, 'cpu'):7.2f}"
            )
    print()
    for who in ("outrider", "outrider-size"):
        for ds in ("single", "tree"):
            goals = [
                ("MB/s >= 95% of raw", med(who, ds, "mb_s") >= 0.95 * med("raw", ds, "mb_s")),
                ("CPU <= 1.2x raw", med(who, ds, "cpu") <= 1.2 * med("raw", ds, "cpu")),
                ("peak RSS < 200 MiB", max(m["rss_mib"] for m in results[who][ds]) < 200),
            ]
            if "aibrix" in results:
                goals.append(("MB/s >= 2x AIBrix", med(who, ds, "mb_s") >= 2 * med("aibrix", ds, "mb_s")))
            for text, ok in goals:
                print(f"{who:13} {ds:6} {text:22} {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
