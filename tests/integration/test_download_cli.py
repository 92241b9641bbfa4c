"""`outrider download` as a real process against a local HTTP store: resume after kill -9, spellings, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outrider.transfer.lock import LOCK_NAME
from outrider.transfer.state import RECORD_NAME
from tests.conftest import REPO
from tests.fakes.http_store import RangeServer

MIB = 1024 * 1024
BIG = "big.safetensors"


@pytest.fixture(scope="module")
def tree() -> dict[str, bytes]:
    return {"config.json": b'{"a": 1}', BIG: os.urandom(32 * MIB), "sub/tokenizer.json": os.urandom(3000)}


@pytest.fixture
def store(tree: dict[str, bytes]) -> Iterator[RangeServer]:
    s = RangeServer(tree).start()
    yield s
    s.stop()


def cli(*argv: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "DOWNLOADER_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.download_cli", "download", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*argv: str) -> tuple[int, str]:
    proc = cli(*argv)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_tree(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert sha((dest / path).read_bytes()) == sha(data), path


def done_chunks(manifest: Path) -> set[int]:
    try:
        return set(json.loads(manifest.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return set()


def test_resume_after_kill_fetches_only_missing_chunks(
    store: RangeServer, tree: dict[str, bytes], tmp_path: Path
) -> None:
    dest = tmp_path / "m"
    manifest = dest / f"{BIG}.part.json"
    store.bytes_per_second = 4 * MIB  # per connection: the first run takes several seconds
    proc = cli(store.url, str(dest), "--workers", "2", "--chunk-size", "1MiB")
    try:
        deadline = time.monotonic() + 60
        while len(done_chunks(manifest)) < 4:  # progress as the process itself recorded it
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no chunk recorded within 60s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = done_chunks(manifest)  # final: the process is dead
    assert 4 <= len(done) < 32
    assert not (dest / BIG).exists()  # nothing under the final name
    record = json.loads((dest / ".outrider-download.json").read_text())
    already = set(record["files"])

    store.bytes_per_second = None
    store.gets.clear()
    code, err = run(store.url, str(dest), "--workers", "2", "--chunk-size", "1MiB")
    assert code == 0, err
    assert_tree(dest, tree)
    missing = [(i * MIB, (i + 1) * MIB) for i in range(32) if i not in done]
    assert sorted(store.gets_of(BIG)) == missing
    for path in already:
        assert store.gets_of(path) == []
    assert not manifest.exists() and not (dest / f"{BIG}.part").exists()


def test_aibrix_spellings(store: RangeServer, tree: dict[str, bytes], tmp_path: Path) -> None:
    code, err = run(
        "--model-uri",
        store.url,
        "--local-dir",
        str(tmp_path / "local"),
        "--model-name",
        "llama",
        "--enable-progress-bar",
        "--download-extra-config",
        '{"timeout": 5}',
    )
    assert code == 0, err
    assert_tree(tmp_path / "local" / "llama", tree)
    assert "3 files verified" in err.strip().splitlines()[-1]


def test_filters_and_workers_flags(store: RangeServer, tmp_path: Path) -> None:
    flags = ["--include", "*.json", "--exclude", "sub/*", "--workers", "3", "--chunk-size", "256KiB"]
    code, err = run(store.url, str(tmp_path / "j"), *flags)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == [RECORD_NAME, LOCK_NAME, "config.json"]
    assert store.gets_of(BIG) == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "SOURCE"),
        (["{url}"], "DEST"),
        (["{url}", "{dest}", "--workers", "0"], "--download-workers"),
        (["{url}", "{dest}", "--chunk-size", "tiny"], "--chunk-size"),
        (["{url}", "{dest}", "--download-extra-config", "{{bad"], "--download-extra-config"),
        (["{url}", "{dest}", "--include", "*.gguf"], "*.gguf"),
        (["ftp://nowhere/x", "{dest}"], "expected http://host:port"),
        (["{url}", "{dest}", "--local-dir", "/tmp"], "give one of DEST"),
        (["{url}", "{dest}", "-o", "/tmp/x"], "give one of DEST"),
        (["{url}", "{dest}", "-s", "{url}"], "give one of SOURCE"),
        (["--model-uri", "{url}", "--local-dir", "{dest}", "--model-name", ".."], "--model-name"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(store: RangeServer, tmp_path: Path, argv: list[str], needle: str) -> None:
    dest = tmp_path / "d"
    code, err = run(*(a.format(url=store.url, dest=dest) for a in argv))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("outrider: error:") and needle in lines[0], err
    assert not (dest / BIG).exists() and store.gets_of(BIG) == []


def test_failed_download_is_exit_1_and_publishes_nothing(store: RangeServer, tmp_path: Path) -> None:
    store.forbidden.add(BIG)
    code, err = run(store.url, str(tmp_path / "f"))
    assert code == 1
    assert "403 AccessDenied" in err.strip().splitlines()[-1]
    assert not (tmp_path / "f" / BIG).exists()
