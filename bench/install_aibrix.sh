#!/usr/bin/env bash
# Install the AIBrix runtime (PyPI `aibrix`) into its own venv at DIR, for bench/metrics_bench.py.
#
# Usage: bench/install_aibrix.sh DIR
#   PYTHON       interpreter that creates the venv (default: python3; aibrix wants >= 3.10)
#   AIBRIX_SPEC  pip requirement (default: aibrix==0.8.0, the version the bench was written against)
#
# Idempotent: an existing venv whose aibrix already satisfies AIBRIX_SPEC is left as it is. Either way it
# ends by starting `aibrix_runtime` on a free loopback port and polling GET /healthz until it answers 200
# (deadline 60 s), then stopping it. AIBrix pulls in about 80 packages (boto3, kubernetes,
# google-cloud-storage, tos, redis, asyncssh, hf-transfer, fastapi/uvicorn, ...), so keep it out of the
# project's own venv. Then: python bench/metrics_bench.py --aibrix-python DIR/bin/python
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
python=${PYTHON:-python3}
spec=${AIBRIX_SPEC:-aibrix==0.8.0}

if [[ ! -x "$dir/bin/python" ]]; then
    echo "creating venv $dir"
    "$python" -m venv "$dir"
fi
satisfied() {
    "$dir/bin/python" - "$spec" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement

req = Requirement(sys.argv[1])
sys.exit(0 if req.specifier.contains(version(req.name), prereleases=True) else 1)
EOF
}
if satisfied; then
    echo "$spec already installed in $dir"
else
    echo "installing $spec into $dir"
    "$dir/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
    "$dir/bin/python" -m pip install --disable-pip-version-check --quiet "$spec"
fi

# Smoke test: aibrix_runtime starts and answers /healthz. The engine endpoint need not exist for that.
"$dir/bin/python" - "$dir" <<'EOF'
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version

venv = sys.argv[1]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
with tempfile.TemporaryDirectory(prefix="aibrix-smoke-") as tmp:
    env = dict(os.environ, INFERENCE_ENGINE="vllm", INFERENCE_ENGINE_ENDPOINT="http://127.0.0.1:9",
               PROMETHEUS_MULTIPROC_DIR=tmp)
    log = open(os.path.join(tmp, "log"), "w+")
    proc = subprocess.Popen([os.path.join(venv, "bin", "aibrix_runtime"), "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started, ok = time.monotonic(), False
    try:
        while time.monotonic() - started < 60 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    ok = r.status == 200
                    break
            except OSError:
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if not ok:
        log.seek(0)
        sys.stderr.write(log.read()[-3000:])
        sys.exit(f"aibrix_runtime did not answer /healthz (exit code {proc.returncode})")
    print(f"aibrix {version('aibrix')}: aibrix_runtime answered /healthz after {time.monotonic() - started:.1f} s")
    print(f"use: python bench/metrics_bench.py --aibrix-python {venv}/bin/python")
EOF
