"""Many pods, one cache: N outrider processes fetching one model into ONE destination (a node's hostPath or a
ReadWriteMany volume they share) against N processes each fetching it into its own directory, on one local S3.

The store is s3rver (as in download_bench.py, whose Store, upload and measure this reuses) behind a counting TCP
proxy (tests/servers/counting_proxy.py) that counts every byte the store sends. Per N = 1, 2, 4, 8 and per layout:
the wall time until the last process finishes, the bytes the store served (as a multiple of the model's size), the
clients' CPU seconds per GB of model each pod ends up with, and their peak RSS; medians of --rounds rounds, plotted
to --plot (PNG). One destination should serve ~1x the model whatever N (one writer, the others wait and use its
files), separate destinations N x; the wall time of one destination stays that of one download.

    python bench/shared_cache_bench.py [--pods 1,2,4,8] [--rounds 3] [--quick] [--plot bench/shared_cache.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.download_bench import BUCKET, KEYS, MIB, Store, ensure_s3rver, measure, upload  # noqa: E402
from tests.servers.counting_proxy import CountingProxy  # noqa: E402

LAYOUTS = ("one destination", "separate destinations")


def run_round(n: int, layout: str, scratch: Path, env: dict[str, str], store: Store, proxy: CountingProxy) -> Any:
    base = scratch / "dest" / layout.replace(" ", "-")
    shutil.rmtree(base, ignore_errors=True)
    dests = [base / "model"] * n if layout == LAYOUTS[0] else [base / str(i) for i in range(n)]
    os.sync()
    argv = [sys.executable, "-m", "outrider", "download", f"s3://{BUCKET}/shared"]
    before = proxy.served
    result = measure([[*argv, str(dest)] for dest in dests], env, store)
    result["served"] = proxy.served - before
    shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--s3rver-dir", default=str(ROOT / ".nox" / "_s3rver"))
    parser.add_argument("--pods", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 256 MiB model, 1 round")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "shared_cache.png"))
    args = parser.parse_args()
    shard = 64 * MIB if args.quick else 256 * MIB
    files = [(f"model-{i + 1:05d}-of-00004.safetensors", shard) for i in range(4)]
    size = sum(s for _, s in files)
    rounds = 1 if args.quick else args.rounds
    counts = [int(n) for n in args.pods.split(",") if n]
    scratch = Path(tempfile.mkdtemp(prefix="outrider-cachebench-"))
    store = Store(ensure_s3rver(Path(args.s3rver_dir)), scratch / "s3rver", scratch / "s3rver.log")
    proxy = CountingProxy(int(store.endpoint.rsplit(":", 1)[1])).start()
    env = {**os.environ, **KEYS, "AWS_ENDPOINT_URL": proxy.url}
    results: dict[str, dict[int, list[Any]]] = {layout: {} for layout in LAYOUTS}
    try:
        upload(store.endpoint, {"shared": files}, scratch, {**env, "AWS_ENDPOINT_URL": store.endpoint})
        for r in range(rounds):
            for n in counts:
                for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
                    m = run_round(n, layout, scratch, env, store, proxy)
                    results[layout].setdefault(n, []).append(m)
                    print(
                        f"round {r + 1} pods={n} {layout:22} last done {m['wall']:6.1f}s  served "
                        f"{m['served'] / size:5.2f}x  cpu {m['cpu'] / (n * size / 1e9):5.2f} s/GB per copy",
                        flush=True,
                    )
    finally:
        proxy.stop()
        store.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, size, args.plot)
    return 0


def med(runs: list[Any], key: str) -> float:
    return float(statistics.median(m[key] for m in runs))


def report(results: dict[str, dict[int, list[Any]]], size: int, plot: str) -> None:
    print(f"\nmany pods, one cache: a {size / 2**30:g} GiB model (medians)")
    print(f"{'layout':22} {'pods':>4} {'wall s':>7} {'served x':>8} {'CPU s/GB':>8} {'RSS MiB':>7}")
    for layout, runs in results.items():
        for n, ms in runs.items():
            cpu = med(ms, "cpu") / (n * size / 1e9)
            rss = max(run["rss_mib"] for m in ms for run in m["runs"])
            print(f"{layout:22} {n:4} {med(ms, 'wall'):7.1f} {med(ms, 'served') / size:8.2f} {cpu:8.2f} {rss:7.1f}")
    draw(results, size, plot)


def draw(results: dict[str, dict[int, list[Any]]], size: int, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, (wall, served, cpu) = plt.subplots(1, 3, figsize=(13, 4))
    for layout, runs in results.items():
        counts = sorted(runs)
        wall.plot(counts, [med(runs[n], "wall") for n in counts], marker="o", label=layout)
        served.plot(counts, [med(runs[n], "served") / size for n in counts], marker="o", label=layout)
        cpu.plot(counts, [med(runs[n], "cpu") / (n * size / 1e9) for n in counts], marker="o", label=layout)
    panels = ((wall, "seconds until the last pod is done"), (served, "bytes served / model size"))
    for axes, label in (*panels, (cpu, "client CPU s per GB per pod")):
        axes.set_xlabel("concurrent outrider processes (pods)")
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle("Many pods, one cache (s3rver on loopback behind a counting proxy, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
