"""Request ids, the access log and outrider's own metrics, read back from a running outrider over real sockets.

Downloads come from moto's S3 through the real store code; adapters are loaded into the stand-in vLLM. Every
number is read from the served /metrics page with prometheus_client's parser, and the whole page then goes through
promtool.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from outrider import logs
from outrider.sources.options import SourceOptions
from outrider.transfer.settings import DownloadSettings
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lora_fixtures import lora_settings, make_adapter
from tests.integration.test_promtool import promtool
from tests.servers.moto import MotoServer

TOKEN = "observe-token-0123456789"
MODEL = {"m/config.json": b'{"a": 1}', "m/weights.safetensors": os.urandom(200_000), "m/sub/t.json": b"{}"}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, tuple[str, str]]]:
    server = MotoServer()
    server.start()
    try:
        server.seed("models", MODEL)
        lister = server.create_user("lister", ["s3:ListBucket"])  # lists, cannot read: its jobs fail mid-run
        server.enforce_auth(True)
        yield server, lister
    finally:
        server.stop()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def outrider(
    nursery: trio.Nursery, tmp_path: Path, moto: tuple[MotoServer, tuple[str, str]]
) -> AsyncIterator[Running]:
    engine = FakeLoraEngine("vllm")
    await engine.start(nursery)
    volume = tmp_path / "adapters"
    make_adapter(volume, "a")
    make_adapter(volume, "broken", valid=False)
    (tmp_path / "models").mkdir()
    pod = SourceOptions(endpoint=moto[0].url, region="us-east-1")
    downloads = DownloadSettings(
        model_root=str(tmp_path / "models"), pvc_root=str(volume), workers=2, source_defaults=pod
    )
    settings = lora_settings(engine, volume, api_token=TOKEN, downloads=downloads, max_body_size=64 * 1024)
    settings = dataclasses.replace(settings, metrics_profiles=("outrider", "kthena", "aibrix"))
    o = await start_outrider(nursery, settings)
    o.client.headers["authorization"] = f"Bearer {TOKEN}"
    yield o
    o.shutdown.set()
    engine.stop()


def samples(page: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(page) for s in f.samples]


def value(page: str, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, v in samples(page):
        if sample_name == name and all(sample_labels.get(k) == want for k, want in labels.items()):
            return float(v)
    return None


async def test_every_answer_carries_a_request_id_that_its_log_events_share(
    outrider: Running, log_lines: io.StringIO
) -> None:
    anonymous = httpx.AsyncClient(base_url=outrider.url)
    answers = {
        "hot route": await anonymous.get("/health"),
        "metrics": await anonymous.get("/metrics"),
        "quart 404": await anonymous.get("/v1/adapters/none"),
        "unmatched": await anonymous.get("/nowhere/at/all"),
        "guard 401": await anonymous.post("/v1/downloads", content=b"{}"),
        "guard 413": await outrider.client.post("/v1/downloads", content=b"x" * (65 * 1024)),
        "hot 405": await anonymous.post("/health"),
        "bad request": await outrider.client.post("/v1/downloads", content=b"not json"),
    }
    await anonymous.aclose()
    ids = {what: r.headers.get("x-request-id") for what, r in answers.items()}
    assert all(ids.values()), ids
    assert len(set(ids.values())) == len(ids)  # one per request
    assert answers["guard 401"].status_code == 401 and answers["guard 413"].status_code == 413

    mine = await outrider.client.get("/v1/adapters?secret=query-value", headers={"x-request-id": "trace-1:a.b_c-d"})
    assert mine.headers["x-request-id"] == "trace-1:a.b_c-d"
    for insane in ("", "x" * 129, "has space", "semi;colon", "ü"):
        answer = await outrider.client.get("/v1/adapters", headers={b"x-request-id": insane.encode()})
        assert answer.headers["x-request-id"] not in (insane, ""), insane
        assert len(answer.headers.get_list("x-request-id")) == 1

    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = {e["request_id"]: e for e in events if e["logger"] == "outrider.access"}
    for what, rid in ids.items():
        assert rid in access, what
        assert access[rid]["status"] == answers[what].status_code
        assert access[rid]["bytes"] == int(answers[what].headers["content-length"])  # as sent (gzip or not)
    assert access[ids["hot route"]]["level"] == "debug" and access[ids["metrics"]]["level"] == "debug"
    assert access[ids["quart 404"]]["level"] == "info"
    assert access[ids["quart 404"]]["route"] == "/v1/adapters/{name}"
    assert access[ids["unmatched"]]["route"] == "unmatched"
    assert access[ids["guard 401"]]["route"] == "/v1/downloads"
    entry = access["trace-1:a.b_c-d"]
    assert entry["path"] == "/v1/adapters" and entry["method"] == "GET" and entry["client"].startswith("127.0.0.1:")
    assert entry["duration_ms"] > 0
    assert "query-value" not in log_lines.getvalue()
    assert "not json" not in log_lines.getvalue()  # bodies are never logged


async def test_request_metrics_count_route_templates_never_raw_paths(outrider: Running) -> None:
    for i in range(3):
        await outrider.client.get(f"/v1/adapters/raw-name-{i}")
        await outrider.client.get(f"/random/raw-path-{i}")
    await outrider.client.request("BREW", "/v1/adapters")
    await outrider.client.delete("/v1/downloads")  # a route's path, a method it does not take
    await outrider.client.get("/health")
    page = (await outrider.client.get("/metrics")).text
    requests = "outrider_http_requests_total"
    assert value(page, requests, method="GET", route="/v1/adapters/{name}", status="404") == 3
    assert value(page, requests, method="GET", route="unmatched", status="404") == 3
    assert value(page, requests, method="other", route="/v1/adapters", status="405") == 1
    assert value(page, requests, method="DELETE", route="/v1/downloads", status="405") == 1
    assert value(page, requests, method="GET", route="/health", status="200") == 1
    count = value(page, "outrider_http_request_duration_seconds_count", method="GET", route="/v1/adapters/{name}")
    assert count == 3
    labels = {v for name, ls, _ in samples(page) if name.startswith("outrider_http_") for v in ls.values()}
    assert not any("raw" in label or label == "BREW" for label in labels), labels


async def test_download_and_adapter_metrics_follow_real_work(
    outrider: Running, moto: tuple[MotoServer, tuple[str, str]]
) -> None:
    server, lister = moto
    reader = {"access_key": server.reader[0], "secret_key": server.reader[1]}
    body: dict[str, Any] = {"source": "s3://models/m", "dest": "m", "config": reader, "wait": True}
    response = await outrider.client.post("/v1/downloads", json=body, timeout=60)
    assert response.status_code == 200, response.text
    denied = {**body, "dest": "denied", "config": {"access_key": lister[0], "secret_key": lister[1]}}
    response = await outrider.client.post("/v1/downloads", json=denied, timeout=60)
    assert response.status_code == 403 and response.json()["job"]["state"] == "failed", response.text

    volume = Path(outrider.runtime.settings.adapter_root)
    response = await outrider.client.put("/v1/adapters/a", json={"source": str(volume / "a"), "wait": True})
    assert response.status_code == 200, response.text
    response = await outrider.client.put("/v1/adapters/b", json={"source": str(volume / "broken"), "wait": True})
    assert response.status_code >= 400, response.text
    response = await outrider.client.delete("/v1/adapters/a", params={"wait": "true"})
    assert response.status_code == 200, response.text
    response = await outrider.client.put("/v1/adapters/a2", json={"source": str(volume / "a"), "wait": True})
    assert response.status_code == 200, response.text

    page = (await outrider.client.get("/metrics")).text
    assert value(page, "outrider_download_bytes_total") == sum(len(d) for d in MODEL.values())
    assert value(page, "outrider_download_files_total") == len(MODEL)
    assert value(page, "outrider_download_duration_seconds_count") == 1
    assert value(page, "outrider_download_failures_total", reason="access_denied") == 1
    assert value(page, "outrider_download_failures_total", reason="internal") == 0
    assert value(page, "outrider_download_jobs_active") == 0
    assert value(page, "outrider_adapters", state="loaded") == 1  # a2
    assert value(page, "outrider_adapters", state="failed") == 1  # b, backing off
    assert value(page, "outrider_adapter_load_seconds_count") == 2  # a and a2
    assert value(page, "outrider_adapter_unload_seconds_count") == 1
    errors = value(page, "outrider_adapter_reconcile_errors_total", reason="engine_refused")
    assert errors is not None and errors >= 1

    async def retracted() -> bool:
        return (await outrider.client.delete("/v1/adapters/b")).status_code in (200, 202, 404)

    await wait_until(retracted, what="b retracted")


async def test_the_whole_page_after_traffic_passes_promtool(outrider: Running) -> None:
    await outrider.client.get("/v1/adapters/x")
    await outrider.client.get("/health")
    await outrider.client.post("/v1/downloads", content=b"{}")
    page = (await outrider.client.get("/metrics")).text
    assert "outrider_http_request_duration_seconds_bucket" in page
    own = page[page.index("# HELP outrider_engine_up") :]  # outrider's own families (the engine's page is first)
    rc, findings = promtool(own)
    assert rc == 0, findings
    rc, findings = promtool(page)
    assert rc in (0, 3) and not any(f.startswith("outrider_") for f in findings), findings
