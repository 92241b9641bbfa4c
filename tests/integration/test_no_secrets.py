"""No credential reaches a log line, a response body, a job or adapter record, or the metrics page.

A real `outrider serve` process runs at DEBUG with JSON logs, an API token and an engine API key, with pod store
credentials and a Hugging Face token in its env. Over real sockets it downloads from moto's S3 with request-config
keys (good ones; a wrong secret; an unknown key; a user that may list but not read, whose job fails mid-run), is
sent bad requests that carry credentials in their config, and loads and unloads a LoRA adapter from S3 with config
credentials into the stand-in engine. Then every byte it said — its stderr, every response body, the download and
adapter records, /metrics and /openapi.json — is searched for each secret value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import wait_until
from tests.processes import stop
from tests.servers.moto import MotoServer, free_port

API_TOKEN = "apitoken-OUTRIDER-SECRET-0001"
ENGINE_KEY = "enginekey-OUTRIDER-SECRET-0002"
POD_ACCESS_KEY = "podak-OUTRIDER-SECRET-0003"
POD_SECRET_KEY = "podsk-OUTRIDER-SECRET-0004"
POD_HF_TOKEN = "hf_pod-OUTRIDER-SECRET-0005"
WRONG_SECRET = "wrongsk-OUTRIDER-SECRET-0006"
UNKNOWN_ACCESS_KEY = "AKIAOUTRIDERSECRET07"
UNKNOWN_SECRET = "unknownsk-OUTRIDER-SECRET-0008"
BAD_REQUEST_SECRET = "badreq-OUTRIDER-SECRET-0009"
HF_REQUEST_TOKEN = "hf_req-OUTRIDER-SECRET-0010"

MODEL = {
    "llama/config.json": b'{"a": 1}',
    "llama/model.safetensors": os.urandom(300_000),
}
ADAPTER = {
    "lora/sql/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "lora/sql/adapter_model.safetensors": bytes(range(256)) * 64,
}


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[MotoServer, tuple[str, str]]]:
    server = MotoServer()
    server.start()
    try:
        server.seed("models", {**MODEL, **ADAPTER})
        # May list the bucket but not read objects: the job is accepted, then fails on its first GET.
        lister = server.create_user("lister", ["s3:ListBucket"])
        server.enforce_auth(True)
        yield server, lister
    finally:
        server.stop()


def start_outrider(engine: FakeLoraEngine, moto: MotoServer, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTRIDER_", "INFERENCE_", "AWS_", "HF_"))}
    env.update(
        {
            "OUTRIDER_ENGINE": "vllm",
            "OUTRIDER_ENGINE_BASE_URL": engine.base_url,
            "OUTRIDER_ENGINE_API_KEY": ENGINE_KEY,
            "OUTRIDER_HOST": "127.0.0.1",
            "OUTRIDER_PORT": str(port),
            "OUTRIDER_API_TOKEN": API_TOKEN,
            "OUTRIDER_LOG_LEVEL": "debug",
            "OUTRIDER_LOG_FORMAT": "json",
            "OUTRIDER_MODEL_ROOT": str(tmp / "models"),
            "OUTRIDER_ADAPTER_ROOT": str(tmp / "adapters"),
            "OUTRIDER_ADAPTER_SYNC_INTERVAL": "0.2",
            "OUTRIDER_SCRAPE_INTERVAL": "0.2",
            "OUTRIDER_DOWNLOAD_WORKERS": "2",
            "AWS_ENDPOINT_URL": moto.url,  # the pod's endpoint: request keys are sent there
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": POD_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": POD_SECRET_KEY,
            "HF_TOKEN": POD_HF_TOKEN,
        }
    )
    with (tmp / "stderr.log").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "outrider", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=err
        )


class Recorder:
    """An httpx client that keeps every response body it receives."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=60.0)
        self.bodies: list[str] = []
        self.request_ids: list[str] = []

    async def call(
        self, method: str, path: str, *, auth: bool = True, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        sent = {"authorization": f"Bearer {API_TOKEN}"} if auth else {}
        response = await self.client.request(method, path, headers={**sent, **(headers or {})}, **kwargs)
        self.bodies.append(response.text)
        self.request_ids.append(response.headers["x-request-id"])
        return response


async def test_no_secret_reaches_logs_bodies_records_or_metrics(
    nursery: trio.Nursery, moto: tuple[MotoServer, tuple[str, str]], tmp_path: Path
) -> None:
    server, lister = moto
    reader = server.reader
    engine = FakeLoraEngine("vllm")
    await engine.start(nursery)
    (tmp_path / "models").mkdir()
    (tmp_path / "adapters").mkdir()
    port = free_port()
    proc = start_outrider(engine, server, tmp_path, port)
    api = Recorder(f"http://127.0.0.1:{port}")
    try:

        async def up() -> bool:
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                return (await api.client.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(up, within=30, what="outrider serving")

        good = {"access_key": reader[0], "secret_key": reader[1]}
        response = await api.call(
            "POST", "/v1/downloads", json={"source": "s3://models/llama", "dest": "llama", "config": good, "wait": True}
        )
        assert response.status_code == 200, response.text
        assert (tmp_path / "models" / "llama" / "model.safetensors").read_bytes() == MODEL["llama/model.safetensors"]

        wrong = {"access_key": reader[0], "secret_key": WRONG_SECRET}
        response = await api.call(
            "POST", "/v1/downloads", json={"source": "s3://models/llama", "dest": "w", "config": wrong}
        )
        assert response.status_code == 403, response.text
        unknown = {"access_key": UNKNOWN_ACCESS_KEY, "secret_key": UNKNOWN_SECRET}
        response = await api.call(
            "POST", "/v1/download_model", json={"source": "s3://models/llama", "output_dir": "u", "config": unknown}
        )
        assert response.status_code == 403, response.text
        listing_only = {"access_key": lister[0], "secret_key": lister[1]}
        response = await api.call(
            "POST",
            "/v1/downloads",
            json={"source": "s3://models/llama", "dest": "l", "config": listing_only, "wait": True},
        )
        assert response.status_code == 403, response.text
        assert response.json()["job"]["state"] == "failed"

        # Bad requests that carry credentials: half a pair, a non-string, a malformed JSON string, a Hugging Face
        # token with an unknown key beside it.
        for body in (
            {"source": "s3://models/llama", "dest": "x", "config": {"access_key": BAD_REQUEST_SECRET}},
            {
                "source": "s3://models/llama",
                "dest": "x",
                "config": {"secret_key": [BAD_REQUEST_SECRET], "access_key": 1},
            },
            {"source": "s3://models/llama", "dest": "x", "config": '{"secret_key": "' + BAD_REQUEST_SECRET},
            {
                "source": "hf://org/none",
                "dest": "x",
                "config": {"hf_token": HF_REQUEST_TOKEN},
                "nope": HF_REQUEST_TOKEN,
            },
        ):
            response = await api.call("POST", "/v1/downloads", json=body)
            assert 400 <= response.status_code < 500, response.text
        response = await api.call(
            "POST",
            "/v1/download_model",
            json={
                "source": "s3://models/llama",
                "output_dir": "k",
                "config": json.dumps({"secret_key": BAD_REQUEST_SECRET}),
            },
        )
        assert 400 <= response.status_code < 500, response.text
        # A wrong API token: refused, and the right one is not echoed.
        response = await api.call(
            "POST", "/v1/downloads", auth=False, json={}, headers={"authorization": "Bearer nope"}
        )
        assert response.status_code == 403

        # A LoRA adapter from S3 with config credentials, loaded and unloaded, and one left loaded for the records.
        source = {"source": "s3://models/lora/sql", "config": good, "wait": True}
        response = await api.call("PUT", "/v1/adapters/sql", json=source)
        assert response.status_code == 200, response.text
        assert engine.loaded == {"sql": str(tmp_path / "adapters" / "sql")}
        response = await api.call("DELETE", "/v1/adapters/sql", params={"wait": "true"})
        assert response.status_code == 200, response.text
        assert (await api.call("PUT", "/v1/adapters/kept", json=source)).status_code == 200
        response = await api.call("PUT", "/v1/adapters/denied", json={**source, "config": wrong, "wait": True})
        assert response.status_code >= 400

        records = [
            (await api.call("GET", "/v1/downloads", auth=False)).text,
            (await api.call("GET", "/v1/adapters", auth=False)).text,
            (await api.call("GET", "/v1/model/list", auth=False)).text,
        ]
        metrics = (await api.call("GET", "/metrics", auth=False)).text
        assert "outrider_http_requests_total" in metrics
        spec = (await api.call("GET", "/openapi.json", auth=False)).text  # its examples included
        assert '"examples"' in spec
        assert ENGINE_KEY in engine.seen_headers[-1].get("authorization", "")  # the key was in use
    finally:
        await api.client.aclose()
        stop(proc)
        engine.stop()

    log = (tmp_path / "stderr.log").read_text()
    events = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON event
    # The run really logged: access events at DEBUG and INFO, each with the id its answer carried, and the failures.
    access = [e for e in events if e["logger"] == "outrider.access"]
    assert {e["request_id"] for e in access} >= set(api.request_ids)
    assert any(e["route"] == "/health" and e["level"] == "debug" for e in access)
    assert any(e["route"] == "/v1/downloads" and e["status"] == 403 for e in access)
    assert any("failed" in e["message"] and e["logger"].startswith("outrider.transfer") for e in events)

    secrets = {
        "API token": API_TOKEN,
        "engine API key": ENGINE_KEY,
        "pod access key": POD_ACCESS_KEY,
        "pod secret key": POD_SECRET_KEY,
        "pod HF token": POD_HF_TOKEN,
        "reader access key": reader[0],
        "reader secret key": reader[1],
        "lister access key": lister[0],
        "lister secret key": lister[1],
        "wrong secret": WRONG_SECRET,
        "unknown access key": UNKNOWN_ACCESS_KEY,
        "unknown secret": UNKNOWN_SECRET,
        "bad request secret": BAD_REQUEST_SECRET,
        "request HF token": HF_REQUEST_TOKEN,
    }
    places = {
        "log": log,
        "bodies": "\n".join(api.bodies),
        "records": "\n".join(records),
        "metrics": metrics,
        "openapi": spec,
    }
    leaks = [f"{what} in {where}" for what, value in secrets.items() for where, text in places.items() if value in text]
    assert leaks == []
