"""The pod's own model (--pod-model): fetched at start-up from moto's S3, with GET /startup 503 and the progress on
/metrics until every file is published, 200 after; a source that cannot be had fails for good, saying why."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from outrider.settings import Settings
from outrider.sources.options import SourceOptions
from outrider.transfer.settings import DownloadSettings
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider, wait_until
from tests.integration.stores import moto_fixture
from tests.servers.counting_proxy import CountingProxy
from tests.servers.moto import ADMIN, REGION, MotoServer

MIB = 1024 * 1024
TREE = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "model.safetensors": os.urandom(16 * MIB)}

moto = moto_fixture("pods", "tiny", TREE)


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[CountingProxy]:
    p = CountingProxy(moto.port, 2 * MIB).start()  # ~2 s for the model: long enough to see it downloading
    yield p
    p.stop()


def settings(
    engine: FakeEngine, proxy: CountingProxy, root: Path, source: str, directory: str | None = None
) -> Settings:
    store = SourceOptions(access_key=ADMIN[0], secret_key=ADMIN[1], endpoint=proxy.url, region=REGION)
    downloads = DownloadSettings(
        model_root=str(root),
        workers=4,
        chunk_size=MIB,
        pod_model=source,
        pod_model_dir=directory,
        source_defaults=store,
    )
    return fast_settings(engine, downloads=downloads)


def gauge(page: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_the_pod_model_is_fetched_at_start_and_startup_turns_200_once_it_is_complete(
    nursery: trio.Nursery, vllm_engine: FakeEngine, proxy: CountingProxy, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    run = await start_outrider(nursery, settings(vllm_engine, proxy, root, "s3://pods/tiny", "qwen"))
    first = await run.client.get("/startup")
    assert first.status_code == 503, first.text
    assert first.json()["status"] == "downloading" and first.json()["source"] == "s3://pods/tiny"
    assert not (root / "qwen" / "model.safetensors").exists()
    assert (await run.client.get("/health")).status_code == 200  # liveness answers meanwhile

    async def some_progress() -> bool:
        page = (await run.client.get("/metrics")).text
        return (gauge(page, "outrider_pod_model_bytes_done") or 0) > 0

    await wait_until(some_progress, within=30, what="download progress on /metrics")
    page = (await run.client.get("/metrics")).text
    assert gauge(page, "outrider_pod_model_state", state="downloading") == 1
    assert gauge(page, "outrider_pod_model_size_bytes") == sum(len(v) for v in TREE.values())
    assert gauge(page, "outrider_pod_model_files") == 2

    async def ready() -> bool:
        return (await run.client.get("/startup")).status_code == 200

    await wait_until(ready, within=60, what="/startup 200")
    body = (await run.client.get("/startup")).json()
    assert body["status"] == "ready" and body["model_dir"] == str(root / "qwen") and body["files_done"] == 2
    for path, data in TREE.items():  # complete when it says so
        assert hashlib.sha256((root / "qwen" / path).read_bytes()).digest() == hashlib.sha256(data).digest()
    await wait_until(
        lambda: _state_is(run.client, "ready"), within=5, what="outrider_pod_model_state ready on /metrics"
    )
    run.shutdown.set()


async def _state_is(client: httpx.AsyncClient, state: str) -> bool:
    return gauge((await client.get("/metrics")).text, "outrider_pod_model_state", state=state) == 1


async def test_a_pod_model_that_cannot_be_had_fails_for_good_and_says_why(
    nursery: trio.Nursery, vllm_engine: FakeEngine, proxy: CountingProxy, tmp_path: Path
) -> None:
    run = await start_outrider(nursery, settings(vllm_engine, proxy, tmp_path / "models", "s3://pods/missing"))

    async def failed() -> bool:
        return bool((await run.client.get("/startup")).json()["status"] == "failed")

    await wait_until(failed, within=30, what="/startup failed")
    answer = await run.client.get("/startup")
    assert answer.status_code == 503
    assert (
        answer.json()["error"]["type"] == "source_not_found"
        and "s3://pods/missing" in answer.json()["error"]["message"]
    )
    assert await _state_is(run.client, "failed")
    run.shutdown.set()


async def test_without_a_pod_model_startup_is_200_at_once(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    run = await start_outrider(nursery, fast_settings(vllm_engine))
    answer = await run.client.get("/startup")
    assert answer.status_code == 200 and answer.json()["status"] == "ready" and answer.json()["source"] is None


def test_a_bad_pod_model_source_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="pod_model"):
        DownloadSettings(pod_model="ftp://nowhere/x")
    assert dataclasses.replace(DownloadSettings(), pod_model="org/name").pod_model == "org/name"
