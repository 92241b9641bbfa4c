"""Many outrider processes on one model cache, against moto's S3 behind a counting proxy (the real CLI and the real
`serve`, as separate processes): one fetches, the others wait and use its work, a kill -9 of the writer is taken
over and resumed, a cancel in one process never touches another's files, and the store serves each byte about once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from outrider.transfer.lock import LOCK_NAME
from tests.conftest import REPO
from tests.integration.stores import moto_fixture
from tests.servers.counting_proxy import CountingProxy
from tests.servers.moto import ADMIN, REGION, MotoServer, free_port

MIB = 1024 * 1024
BUCKET = "cache"
BIG = "model.safetensors"
TREE = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', BIG: os.urandom(64 * MIB)}
TOTAL = sum(len(v) for v in TREE.values())
SOURCE = f"s3://{BUCKET}/tiny"
# Each connection of the store gets this many bytes a second: with 4 workers a download takes ~5 s, long enough to
# be killed mid-way, short enough for the suite.
PACE = 3 * MIB
WITHIN = 120.0  # seconds any process may take to reach what a test waits for (only a broken cache comes near)


moto = moto_fixture(BUCKET, "tiny", TREE)


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[CountingProxy]:
    p = CountingProxy(moto.port, PACE).start()
    yield p
    p.stop()


def store_env(proxy: CountingProxy) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_ENGINE", "AWS_"))}
    return {
        **clean,
        "AWS_ACCESS_KEY_ID": ADMIN[0],
        "AWS_SECRET_ACCESS_KEY": ADMIN[1],
        "AWS_ENDPOINT_URL": proxy.url,
        "AWS_REGION": REGION,
    }


def cli(proxy: CountingProxy, dest: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outrider", "download", SOURCE, str(dest), "--workers", "4", *flags],
        cwd=REPO,
        env=store_env(proxy),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class Serve:
    """`outrider serve` as a process of its own, with its downloads under `root`."""

    def __init__(self, proxy: CountingProxy, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = ["serve", "--engine", "vllm", "--port", str(self.port), "--host", "127.0.0.1"]
        argv += ["--engine-base-url", f"http://127.0.0.1:{free_port()}", "--model-root", str(root)]
        argv += ["--download-workers", "4", "--log-format", "text"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "outrider", *argv],
            cwd=REPO,
            env=store_env(proxy),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:  # polling a child process's socket: there is no event to wait on
            assert self.proc.poll() is None, "outrider serve exited at start"
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "outrider serve did not start"
            time.sleep(0.05)

    def submit(self, dest: str, chunk_size: str) -> str:
        body = {"source": SOURCE, "dest": dest, "chunk_size": chunk_size}
        response = httpx.post(f"{self.url}/v1/downloads", json=body, timeout=30)
        assert response.status_code in (200, 201, 202), response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/downloads/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def until_ended(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + WITHIN
        while (job := self.job(job_id))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        return job

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def holder_pid(dest: Path) -> int | None:
    try:
        lease = json.loads((dest / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return None if lease.get("released") else int(lease["pid"])


def written_bytes(dest: Path) -> int:
    """How much of the big file the manifest on disk vouches for (what a takeover would keep)."""
    try:
        manifest = json.loads((dest / f"{BIG}.part.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(manifest.get("done", [])) * int(manifest.get("chunk_size", 0))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Reader(threading.Thread):
    """Polls the final names as an engine or a person would: whatever it finds there must be the whole file."""

    def __init__(self, dest: Path) -> None:
        super().__init__(daemon=True)
        self.dest, self.bad, self.seen, self.inodes = dest, list[str](), set[str](), dict[str, int]()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for path, data in TREE.items():
                if path in self.seen:
                    continue
                try:
                    with open(self.dest / path, "rb") as f:
                        found, inode = f.read(), os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    continue
                self.seen.add(path)
                self.inodes[path] = inode
                if sha(found) != sha(data):
                    self.bad.append(f"{path}: {len(found)} bytes, not the published content")
            time.sleep(0.005)


def assert_complete(dest: Path) -> None:
    for path, data in TREE.items():
        found = (dest / path).read_bytes()
        assert sha(found) == sha(data), path
    assert [p.name for p in dest.rglob("*") if p.name.endswith((".part", ".part.json", ".tmp"))] == []
    record = json.loads((dest / ".outrider-download.json").read_text())
    assert record["complete"] is True and sorted(record["files"]) == sorted(TREE)


def test_four_processes_on_one_destination_survive_a_kill_of_the_writer(proxy: CountingProxy, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    dest = root / "tiny"
    reader = Reader(dest)
    reader.start()
    pods = [Serve(proxy, root), Serve(proxy, root)]
    clis: list[subprocess.Popen[str]] = []
    try:
        # Four writers with four chunk sizes, started together: 2 MiB, 4 MiB, 8 MiB and 16 MiB chunks.
        jobs = [pods[0].submit("tiny", "2MiB"), pods[1].submit("tiny", "16MiB")]
        clis = [cli(proxy, dest, "--chunk-size", "4MiB"), cli(proxy, dest, "--chunk-size", "8MiB")]
        deadline = time.monotonic() + WITHIN
        while written_bytes(dest) < 16 * MIB:  # a quarter of the way, as the writer itself recorded it
            assert time.monotonic() < deadline, "no progress recorded"
            time.sleep(0.02)
        victim = holder_pid(dest)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        survivors_cli = [p for p in clis if p.pid != victim]
        survivors_jobs = [(pod, job) for pod, job in zip(pods, jobs, strict=True) if pod.proc.pid != victim]
        assert len(survivors_cli) + len(survivors_jobs) == 3
        for pod, job in survivors_jobs:
            ended = pod.until_ended(job)
            assert ended["state"] == "completed", ended
        for proc in survivors_cli:
            _, err = proc.communicate(timeout=WITHIN)
            assert proc.returncode == 0, err
    finally:
        reader.done.set()
        reader.join()
        for proc in clis:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for pod in pods:
            pod.close()
    assert_complete(dest)
    assert reader.bad == [] and reader.seen == set(TREE)
    # Published once: the file the reader first saw is the file there now.
    assert all(os.stat(dest / path).st_ino == inode for path, inode in reader.inodes.items())
    # One download's worth (listings, HEADs and a takeover's few seconds of overlap included).
    assert proxy.served <= 1.1 * TOTAL, proxy.served


def test_a_cancel_in_one_process_leaves_the_others_files_alone(proxy: CountingProxy, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    dest = root / "tiny"
    holder, waiter, taker = Serve(proxy, root), Serve(proxy, root), Serve(proxy, root)
    try:
        first = holder.submit("tiny", "4MiB")
        deadline = time.monotonic() + WITHIN
        while holder_pid(dest) != holder.proc.pid or written_bytes(dest) < 8 * MIB:
            assert time.monotonic() < deadline, "the first process never started writing"
            time.sleep(0.02)
        waiting, taking = waiter.submit("tiny", "4MiB"), taker.submit("tiny", "8MiB")
        while not (waiter.job(waiting)["waiting_for"] and taker.job(taking)["waiting_for"]):
            assert time.monotonic() < deadline, "the others never waited"
            time.sleep(0.02)
        assert f"pid {holder.proc.pid}" in str(waiter.job(waiting)["waiting_for"])

        # A waiter's cancel: the writer's part file and manifest stay, and it goes on.
        before = written_bytes(dest)
        assert httpx.delete(f"{waiter.url}/v1/downloads/{waiting}", timeout=10).status_code == 200
        assert waiter.until_ended(waiting)["state"] == "cancelled"
        assert (dest / f"{BIG}.part").exists() and written_bytes(dest) >= before
        assert holder.job(first)["state"] == "running"

        # The writer's cancel: it removes its own parts, and the process still waiting takes over.
        assert httpx.delete(f"{holder.url}/v1/downloads/{first}", timeout=10).status_code == 200
        assert holder.until_ended(first)["state"] == "cancelled"
        assert taker.until_ended(taking)["state"] == "completed"
    finally:
        for pod in (holder, waiter, taker):
            pod.close()
    assert_complete(dest)
