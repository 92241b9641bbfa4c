"""The demo: a real tiny vLLM on CPU with outrider beside it, printing the unified metrics.

Run by `nox -s demo` (which installs vLLM's CPU build first). Builds a tiny random Llama model on the spot (no
download is possible here), starts vLLM and `outrider serve` beside it, sends a few completions, and prints the
unified series outrider adds to the engine's page. `--keep-running` leaves both up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from the repo root

from tests.e2e.engine import VllmProcess, build_tiny_model
from tests.e2e.outrider_process import outrider_process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep-running", action="store_true", help="leave vLLM and outrider up until Ctrl-C")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "outrider-demo")
    args = parser.parse_args()
    python = os.environ.get("OUTRIDER_VLLM_PYTHON")
    if not python:
        print("OUTRIDER_VLLM_PYTHON is not set; run this through `nox -s demo`", file=sys.stderr)
        return 2

    print("building a tiny Llama model and tokenizer ...", flush=True)
    model = build_tiny_model(python, args.workdir / "tiny")
    log = args.workdir / "vllm.log"
    print(f"starting vLLM (CPU) on the tiny model; its log: {log}", flush=True)
    with VllmProcess(python, model, served_name="tiny", log_path=log) as engine:
        took = engine.wait_ready()
        print(f"vLLM ready at {engine.base_url} after {took:.0f}s", flush=True)
        with outrider_process(
            "-E", "vllm", "-B", engine.base_url, "--metrics-profile", "outrider,kthena,aibrix"
        ) as url:
            with httpx.Client(timeout=120) as client:
                for prompt in ("The sidecar", "Metrics are", "Hello"):
                    r = client.post(
                        f"{engine.base_url}/v1/completions",
                        json={"model": "tiny", "prompt": prompt, "max_tokens": 16},
                    )
                    r.raise_for_status()
                # Wait for the scrape that carries these completions (outrider scrapes every second): the
                # engine's token counter, renamed, must be on outrider's page.
                engine_page = client.get(f"{engine.base_url}/metrics").text
                want = {
                    "outrider:" + line.removeprefix("vllm:")
                    for line in engine_page.splitlines()
                    if line.startswith("vllm:generation_tokens_total")
                }
                deadline = time.monotonic() + 30
                page = client.get(f"{url}/metrics").text
                while not want <= set(page.splitlines()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    page = client.get(f"{url}/metrics").text
                ready = client.get(f"{url}/ready").json()
            print("\nunified series outrider serves beside the engine's own (histogram buckets left out):\n")
            for line in page.splitlines():
                if line.startswith(("outrider:", "kthena:", "aibrix:", "outrider_engine_up")) and "_bucket" not in line:
                    print("  " + line)
            print(f"\n/ready says: {ready}")
            print(f"\nwhere to look:\n  {url}/metrics   engine page + unified names + outrider's own metrics")
            print(f"  {url}/ready     readiness (503 with a reason while the engine is down or stale)")
            print(f"  {url}/health    liveness (Kthena shape), {url}/healthz (AIBrix shape)")
            if args.keep_running:
                print("\nboth stay up; Ctrl-C to stop", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
