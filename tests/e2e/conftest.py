"""End-to-end fixtures: one real vLLM (CPU build) per test session, and outrider as a real process beside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.engine import VllmProcess, build_tiny_model


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get("OUTRIDER_VLLM_PYTHON")
    assert python, "OUTRIDER_VLLM_PYTHON is not set: run the e2e tests with `nox -s e2e`, which installs vLLM"
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(vllm_python, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def vllm(vllm_python: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    log = tmp_path_factory.mktemp("logs") / "vllm.log"
    with VllmProcess(vllm_python, tiny_model, served_name="tiny", log_path=log) as server:
        server.wait_ready()
        yield server
