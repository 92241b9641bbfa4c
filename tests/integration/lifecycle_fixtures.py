"""Fixtures for the engine lifecycle tests: a model root with stand-in artifacts, the stand-in engine launched
through the allowlist (`--engine-launch vllm=<python> tests/fakes/standin_engine.py`), fast settings."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from outrider.lifecycle import process
from outrider.lifecycle.arguments import engine_environment
from outrider.lifecycle.config import parse_launch
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.records import RecordStore
from outrider.settings import Settings
from outrider.transfer.settings import DownloadSettings
from tests.integration.conftest import settings_for, wait_until

STANDIN = Path(__file__).resolve().parent.parent / "fakes" / "standin_engine.py"
# A port range of its own per test: ten free ports below the kernel's ephemeral range (from 32768 on Linux), where
# the source ports of the tests' own connections would otherwise take an engine's port between its pick and its bind.
PORTS = 10
_BELOW_EPHEMERAL = (20000, 32000)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_range() -> tuple[int, int]:
    while True:
        first = random.randrange(*_BELOW_EPHEMERAL)
        if all(_free(p) for p in range(first, first + PORTS)):
            return first, first + PORTS - 1


def make_artifact(directory: Path, behaviour: dict[str, Any] | None = None) -> Path:
    """A stand-in model directory (a config and some 'weights'), steering the stand-in with `behaviour`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["StandIn"]}))
    (directory / "model.safetensors").write_bytes(os.urandom(4096))
    if behaviour:
        (directory / "standin.json").write_text(json.dumps(behaviour))
    return directory


def lifecycle_settings(tmp_path: Path, **changes: Any) -> LifecycleSettings:
    (tmp_path / "shm").mkdir(exist_ok=True)  # the pod's /dev/shm, where kvcached segments live
    base = LifecycleSettings(
        commands=parse_launch(f"vllm={sys.executable} {STANDIN}"),
        state_dir=tmp_path / "state",
        ports=port_range(),
        host="127.0.0.1",
        stop_grace=2.0,
        ready_timeout=15.0,
        answer_within=15.0,
        shm_dir=tmp_path / "shm",
        environment=engine_environment(os.environ),
    )
    return dataclasses.replace(base, **changes)


def outrider_settings(tmp_path: Path, engine_url: str, **changes: Any) -> Settings:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "volume").mkdir(exist_ok=True)
    downloads = DownloadSettings(model_root=str(tmp_path / "models"), pvc_root=str(tmp_path / "volume"))
    return settings_for(engine_url, **{"metrics_profiles": ("outrider",), "downloads": downloads, **changes})


def standin_line(state_dir: Path, model: str) -> dict[str, Any]:
    """What the stand-in reported about itself at start (its `STANDIN {...}` line, from its output file)."""
    for line in RecordStore(state_dir).output_path(model).read_text().splitlines():
        if line.startswith("STANDIN "):
            found: dict[str, Any] = json.loads(line[len("STANDIN ") :])
            return found
    raise AssertionError(f"no STANDIN line in the output of {model}")


async def listed(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/v1/runtime/models")
    assert response.status_code == 200, response.text
    return {m["model_name"]: m for m in response.json()["models"]}


async def wait_phase(client: httpx.AsyncClient, model: str, phase: str | None, within: float = 10.0) -> None:
    async def check() -> bool:
        models = await listed(client)
        return (model not in models) if phase is None else models.get(model, {}).get("phase") == phase

    await wait_until(check, within, f"{model} to be {phase or 'gone'}")


def group_gone(pgid: int) -> bool:
    return not process.group_members(pgid)


async def wait_metric(client: httpx.AsyncClient, line: str, within: float = 5.0) -> None:
    """Wait for `line` on /metrics: the page is composed on a timer (metrics/page.py), so a change shows within a
    moment, not at once."""

    async def shows() -> bool:
        return line in (await client.get("/metrics")).text

    await wait_until(shows, within, f"{line!r} on /metrics")
