"""Fixtures for the LoRA integration tests: a volume with adapters, stand-in engines, fast settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio

from outrider.settings import Settings
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider

INTERVAL = 0.2


def make_adapter(root: Path, name: str, valid: bool = True) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    if valid:
        (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
        (path / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    volume = tmp_path / "volume"
    for name in ("a", "b", "c", "d"):
        make_adapter(volume, name)
    make_adapter(volume, "broken", valid=False)
    return volume


@pytest.fixture(params=["vllm", "sglang"])
async def engine(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[FakeLoraEngine]:
    fake = FakeLoraEngine(request.param)
    await fake.start(nursery)
    yield fake
    fake.stop()


@pytest.fixture
async def vllm(nursery: trio.Nursery) -> AsyncIterator[FakeLoraEngine]:
    fake = FakeLoraEngine("vllm")
    await fake.start(nursery)
    yield fake
    fake.stop()


def lora_settings(engine: FakeLoraEngine, root: Path, **changes: object) -> Settings:
    base = Settings(
        engine=engine.flavor,
        engine_base_url=engine.base_url,
        host="127.0.0.1",
        port=0,
        pod="test-pod",
        scrape_interval=0.5,
        scrape_timeout=0.3,
        metrics_max_age=1.5,
        adapter_root=str(root),
        aibrix_adapter_dir=str(root),  # AIBrix delegation loads under the adapter root too, not in /tmp/aibrix
        adapter_sync_interval=INTERVAL,
        downloads=DownloadSettings(pvc_root=str(root)),  # pvc://name: the adapters made under `root`
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass
class Layout:
    pvc: Path  # --pvc-root: a volume the engine does not mount
    adapters: Path  # --adapter-root: the volume both containers mount
    elsewhere: Path  # outside both


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """Separate pvc and adapter roots: `pvc://lora-a` must be copied, `<adapter-root>/in-place` is read in place."""
    found = Layout(tmp_path / "data" / "pvc", tmp_path / "models" / "adapters", tmp_path / "elsewhere")
    for path in dataclasses.astuple(found):
        path.mkdir(parents=True)
    make_adapter(found.pvc, "lora-a")
    make_adapter(found.adapters, "in-place")
    return found


async def start_on(nursery: trio.Nursery, engine: FakeLoraEngine, layout: Layout) -> Running:
    """outrider with `layout`'s roots (downloads confined to the adapter root)."""
    settings = lora_settings(
        engine, layout.adapters, downloads=DownloadSettings(model_root=str(layout.adapters), pvc_root=str(layout.pvc))
    )
    return await start_outrider(nursery, settings)


def assert_downloaded(dest: Path, files: Mapping[str, bytes]) -> None:
    """`dest` holds `files` (keyed `<prefix>/<path>`, as seeded in a bucket), byte for byte."""
    for key, data in files.items():
        got = (dest / key.split("/", 1)[1]).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), key
