"""The engine lifecycle routes' contract: off unless configured, under the API token, and every bad input a 4xx
naming its field; nothing a request sends can name a program, a path outside the roots, a variable or a flag that
runs code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import SecretStr

from outrider.lifecycle.config import parse_launch
from outrider.sources.base import Checksum
from tests.fakes.engine import FakeEngine
from tests.fakes.sources import MemorySource
from tests.integration.conftest import Running, start_outrider
from tests.integration.lifecycle_fixtures import lifecycle_settings, listed, make_artifact, outrider_settings

TOKEN = "lifecycle-test-token-0123"
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/runtime/models/activate", {"model_name": "m", "artifact_url": "/models/m"}),
    ("POST", "/v1/runtime/models/deactivate", {"model_name": "m"}),
    ("POST", "/v1/runtime/models/sleep", {"model_name": "m", "level": 1, "operation_id": "op"}),
    ("POST", "/v1/runtime/models/wake", {"model_name": "m", "operation_id": "op"}),
    ("POST", "/v1/runtime/models/kv-limit", {"model_name": "m", "limit_bytes": 1, "operation_id": "op"}),
    ("GET", "/v1/runtime/models", None),
    ("GET", "/v1/runtime/snapshot", None),
]


async def _start(nursery: trio.Nursery, tmp_path: Path, engine: FakeEngine, **changes: Any) -> Running:
    settings = outrider_settings(tmp_path, engine.base_url, **changes)
    return await start_outrider(nursery, settings, lifecycle=lifecycle_settings(tmp_path))


@pytest.mark.parametrize(("method", "path", "body"), [r for r in ROUTES if r[:2] != ("GET", "/v1/runtime/models")])
async def test_every_route_is_off_unless_configured(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, method: str, path: str, body: dict[str, Any] | None
) -> None:
    o = await start_outrider(nursery, outrider_settings(tmp_path, vllm_engine.base_url))

    answer = await o.client.request(method, path, json=body)

    assert answer.status_code == 501
    assert answer.json()["status"] == "error" and answer.json()["error"]["type"] == "not_configured"
    assert "--engine-launch" in answer.json()["message"]


async def test_the_model_list_is_empty_while_the_lifecycle_is_off(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """AIBrix's runtime answers its controller's list with 200 {"models": []} before it launched anything."""
    o = await start_outrider(nursery, outrider_settings(tmp_path, vllm_engine.base_url))

    answer = await o.client.get("/v1/runtime/models")

    assert (answer.status_code, answer.json()) == (200, {"models": []})


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_the_api_token_reads_too(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, method: str, path: str, body: dict[str, Any] | None
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine, api_token=SecretStr(TOKEN))

    assert (await o.client.request(method, path, json=body)).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert (await o.client.request(method, path, json=body, headers=wrong)).status_code == 403
    right = {"Authorization": f"Bearer {TOKEN}"}
    answer = await o.client.request(method, path, json=body, headers=right)
    assert answer.json().get("error", {}).get("type") not in ("unauthorized", "forbidden"), answer.text


def _activation(**changes: Any) -> dict[str, Any]:
    return {"model_name": "tiny", "artifact_url": "/models/tiny", **changes}


BAD_ACTIVATIONS: list[tuple[dict[str, Any], int, str, str]] = [
    # body, status, field, words in the message
    ({"artifact_url": "/x"}, 400, "model_name", "Field required"),
    (_activation(model_name="../etc"), 400, "model_name", "pattern"),
    (_activation(model_name="-rf"), 400, "model_name", "pattern"),
    (_activation(extra=1), 400, "extra", "Extra inputs"),
    (_activation(port="8000"), 400, "port", "valid integer"),
    (_activation(port=70000), 400, "port", "less than or equal"),
    (_activation(engine="llamacpp"), 400, "engine", "'vllm' or 'sglang'"),
    (_activation(engine="sglang"), 400, "engine", "--engine-launch allows: vllm"),
    (_activation(engine_config={"args": {"--trust-remote-code": ""}}), 400, "engine_config.args.--trust-remote-code",
     "runs code"),
    (_activation(engine_config={"args": {"--chat-template": "/etc/passwd"}}), 400, "engine_config.args.--chat-template",
     "not an engine flag"),
    (_activation(engine_config={"args": {"--model": "/etc"}}), 400, "engine_config.args.--model", "outrider sets"),
    (_activation(engine_config={"args": {"--max-model-len": "lots"}}), 400, "engine_config.args.--max-model-len",
     "whole number"),
    (_activation(engine_config={"args": {"--dtype": "float32; rm -rf /"}}), 400, "engine_config.args.--dtype",
     "one of"),
    (_activation(engine_config={"args": {"--max-model-len": 2048}}), 400, "engine_config.args.--max-model-len",
     "valid string"),
    (_activation(engine_config={"cmd": "sh"}), 400, "engine_config.cmd", "Extra inputs"),
    (_activation(additional_config={"engine-arg:--worker-extension-cls": "x.Y"}), 400,
     "additional_config.engine-arg:--worker-extension-cls", "not an engine flag"),
    (_activation(credentials={"LD_PRELOAD": "/tmp/x.so"}), 400, "credentials.LD_PRELOAD", "not known"),
    (_activation(credentials={"access_key": "AKIDONLY"}), 400, "credentials", "credentials.access_key and"),
    (_activation(credentials={"endpoint": "ftp://store"}), 400, "credentials", "credentials.endpoint"),
    (_activation(artifact_url="/etc"), 403, "artifact_url", "outside"),
    # A store endpoint the caller chose, with no keys of its own: refused before anything is sent there.
    (_activation(artifact_url="s3://models/m", credentials={"endpoint": "http://127.0.0.1:9"}), 403, "credentials",
     "--allow-request-endpoints"),
    (_activation(artifact_url="file:///etc"), 400, "artifact_url", "unknown source scheme"),
    (_activation(artifact_url="pvc://../../etc"), 400, "artifact_url", ".."),
    (_activation(claim_ref={"namespace": "n", "name": "c"}), 400, "claim_ref.uid", "Field required"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "field", "words"), BAD_ACTIVATIONS)
async def test_a_bad_activation_is_a_4xx_naming_the_field_and_launches_nothing(
    nursery: trio.Nursery,
    tmp_path: Path,
    vllm_engine: FakeEngine,
    body: dict[str, Any],
    status: int,
    field: str,
    words: str,
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)
    make_artifact(tmp_path / "models" / "tiny")

    answer = await o.client.post("/v1/runtime/models/activate", json=body)

    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["status"] == "error" and error["port"] == 0 and error["ipc_name"] == ""
    assert error["error"]["field"] == field and words in error["message"], error
    assert await listed(o.client) == {}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/runtime/models/deactivate", {"model_name": "tiny", "mode": 7}, "mode"),
        ("/v1/runtime/models/sleep", {"model_name": "tiny", "level": 3, "operation_id": "op"}, "level"),
        ("/v1/runtime/models/sleep", {"model_name": "tiny", "level": 1, "operation_id": ""}, "operation_id"),
        ("/v1/runtime/models/wake", {"model_name": "tiny"}, "operation_id"),
        ("/v1/runtime/models/kv-limit", {"model_name": "tiny", "limit_bytes": -1, "operation_id": "op"}, "limit_bytes"),
        (
            "/v1/runtime/models/kv-limit",
            {"model_name": "tiny", "limit_bytes": 1.5, "operation_id": "op"},
            "limit_bytes",
        ),
    ],
)
async def test_bad_control_bodies_are_400_naming_the_field(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, path: str, body: dict[str, Any], field: str
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)

    answer = await o.client.post(path, json=body)

    assert answer.status_code == 400 and answer.json()["error"]["field"] == field, answer.text
    assert answer.json()["model_name"] == "tiny" or "model_name" not in body


async def test_controls_of_an_unknown_model_are_404_and_its_deactivation_succeeds(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)

    for path, body in [
        ("/v1/runtime/models/sleep", {"model_name": "ghost", "level": 1, "operation_id": "op"}),
        ("/v1/runtime/models/wake", {"model_name": "ghost", "operation_id": "op"}),
        ("/v1/runtime/models/kv-limit", {"model_name": "ghost", "limit_bytes": 1, "operation_id": "op"}),
    ]:
        answer = await o.client.post(path, json=body)
        assert answer.status_code == 404 and answer.json()["message"] == "model 'ghost' is not active", answer.text
    # As AIBrix answers it: a controller retrying a deactivation must not read the retry as a refusal.
    gone = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "ghost"})
    assert gone.status_code == 200 and gone.json() == {"status": "success", "message": "model 'ghost' was not active"}


async def test_ports_come_from_the_range_and_a_taken_or_outside_one_is_refused(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)
    assert o.runtime.engines is not None
    low, high = o.runtime.engines.settings.ports
    make_artifact(tmp_path / "models" / "a")
    make_artifact(tmp_path / "models" / "b")

    outside = await o.client.post("/v1/runtime/models/activate", json=_activation(port=high + 1))
    assert outside.status_code == 400 and outside.json()["error"]["field"] == "port"
    first = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "a", "artifact_url": str(tmp_path / "models" / "a")}
    )
    assert first.status_code == 200 and low <= first.json()["port"] <= high
    taken = await o.client.post(
        "/v1/runtime/models/activate",
        json={"model_name": "b", "artifact_url": str(tmp_path / "models" / "b"), "port": first.json()["port"]},
    )
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "port"
    other = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "b", "artifact_url": str(tmp_path / "models" / "b")}
    )
    assert other.status_code == 200 and other.json()["port"] != first.json()["port"]
    # The same model asked for with another artifact is a conflict, not a second engine.
    moved = await o.client.post("/v1/runtime/models/activate", json={"model_name": "a", "artifact_url": "org/other"})
    assert moved.status_code == 409 and "deactivate it first" in moved.json()["message"]


async def test_a_symlink_out_of_the_model_root_is_refused(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)
    outside = make_artifact(tmp_path / "elsewhere" / "tiny")
    (tmp_path / "models" / "link").symlink_to(outside)

    answer = await o.client.post(
        "/v1/runtime/models/activate", json=_activation(artifact_url=str(tmp_path / "models" / "link"))
    )

    assert answer.status_code == 403 and answer.json()["error"]["type"] == "source_access_denied", answer.text


def test_the_operators_command_is_checked_at_start() -> None:
    with pytest.raises(ValueError, match="not an executable file"):
        parse_launch("vllm=/no/such/vllm serve")
    with pytest.raises(ValueError, match="must not set --port"):
        parse_launch("vllm=/bin/sh --port 1")
    with pytest.raises(ValueError, match="ENGINE=COMMAND"):
        parse_launch("llamacpp=/bin/sh")
    (only,) = parse_launch("vllm=sh -c 'echo hi'")
    assert only.argv[0].endswith("/sh") and only.argv[1:] == ("-c", "echo hi")


async def test_the_spec_documents_every_lifecycle_route(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)
    spec = (await o.client.get("/openapi.json")).json()

    for method, path, _ in ROUTES:
        operation = spec["paths"][path][method.lower()]
        assert {"200", "501"} <= set(operation["responses"]), path
    body = spec["paths"]["/v1/runtime/models/activate"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["additionalProperties"] is False


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


async def test_an_activation_never_downloads_over_a_model_another_engine_serves_in_place(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    o = await _start(nursery, tmp_path, vllm_engine)
    served = make_artifact(tmp_path / "models" / "x")
    make_artifact(tmp_path / "volume" / "weights" / "other")
    first = await o.client.post("/v1/runtime/models/activate", json={"model_name": "a", "artifact_url": str(served)})
    assert first.status_code == 200, first.text
    before = _files(served)

    # Model `x` from a store would be fetched into <model-root>/x: the directory engine `a` serves.
    clash = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "x", "artifact_url": "pvc://weights/other"}
    )

    assert clash.status_code == 409, clash.text
    assert (clash.json()["error"]["type"], clash.json()["error"]["field"]) == ("conflict", "model_name")
    assert _files(served) == before
    assert (await listed(o.client))["a"]["phase"] == "active"


async def test_a_failed_artifact_download_keeps_its_own_error_in_the_download_list(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """The activation names the download's failure by its own field (artifact_url); the download job, listed by
    GET /v1/downloads, keeps the error as the download engine made it."""
    wrong = MemorySource({"model.safetensors": b"weights"}, display="s3://models/tiny")
    wrong.listed_checksums["model.safetensors"] = Checksum("sha256", "0" * 64)
    settings = outrider_settings(tmp_path, vllm_engine.base_url)
    o = await start_outrider(
        nursery, settings, lifecycle=lifecycle_settings(tmp_path), source_opener=lambda source, config: wrong
    )

    answer = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": "s3://models/tiny"}, timeout=30
    )

    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["field"] == "artifact_url"
    (job,) = (await o.client.get("/v1/downloads")).json()["data"]
    assert job["state"] == "failed" and job["error"]["type"] == "verification_failed"
    assert "field" not in job["error"], job["error"]
