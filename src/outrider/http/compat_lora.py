"""The AIBrix and Kthena runtimes' LoRA routes, answered by outrider's reconciler.

AIBrix: `POST /v1/lora_adapter/load {"lora_name", "lora_path"}`, `POST /v1/lora_adapter/unload {"lora_name"}`,
`GET /v1/models` (the engine's list, relayed). Kthena: `POST /v1/load_lora_adapter {"lora_name", "source",
"output_dir"?, "config"?, "max_workers"?, "async_download"?}` and `POST /v1/unload_lora_adapter {"lora_name"}`.

Unlike the peers, a load here is a declaration: outrider keeps the adapter loaded (across engine restarts) until
it is unloaded. A synchronous load answers once the engine has it; if that first attempt fails the declaration is
withdrawn and the error returned (the engine's own status and message when it refused, 503 naming the engine URL
when it is down). Concurrent loads of one adapter share one fetch and one engine call. An unload answers 200 only
when the engine unloaded it, 404 when the engine does not have it.
"""

from __future__ import annotations

from pydantic import BaseModel
from quart import Blueprint, Response, jsonify

from outrider.adapters.names import validate_name
from outrider.errors import InvalidRequest
from outrider.http import models as m
from outrider.http.adapters import reconciler
from outrider.http.body import bool_field, config_field, json_object, string_field
from outrider.http.spec import describe
from outrider.transfer.paths import confine_off_loop

blueprint = Blueprint("compat_lora", __name__)

# These routes stay as lenient as the peers' (real AIBrix and Kthena controllers send extra fields, `config` as a
# JSON string, "" for unset): their bodies are parsed by http/body.py, and their models only describe them.
# What a load or unload can end with besides success: a bad body or name (400), LoRA management not running or
# the engine not having the adapter (404), the adapters file owning the name (409), a store's or the engine's
# refusal (their own 4xx), the engine's 5xx relayed as 502, the engine or a store unreachable (503), a full
# disk (507).
_FAILURES: dict[int | str, type[BaseModel]] = {status: m.ErrorBody for status in (400, 404, 409, "4XX", 502, 503, 507)}


def _loaded_text(name: str) -> str:
    # vLLM's own success wording, which AIBrix clients see relayed today.
    return f"Success: LoRA adapter '{name}' added successfully."


def _unloaded_text(name: str) -> str:
    return f"Success: LoRA adapter '{name}' removed successfully."


@blueprint.post("/v1/lora_adapter/load")
@describe(request=m.AIBrixLoad, responses={200: m.PlainText, **_FAILURES}, text=[200])
async def aibrix_load() -> Response:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    path = string_field(body, "lora_path")
    assert path is not None
    await reconciler().load(name, path.strip())
    return Response(_loaded_text(name), status=200, content_type="text/plain; charset=utf-8")


@blueprint.post("/v1/lora_adapter/unload")
@describe(request=m.LoraName, responses={200: m.PlainText, **_FAILURES}, text=[200])
async def aibrix_unload() -> Response:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    await reconciler().unload(name)
    return Response(_unloaded_text(name), status=200, content_type="text/plain; charset=utf-8")


@blueprint.get("/v1/models")
@describe(responses={200: m.EngineModels, 404: m.ErrorBody, 503: m.ErrorBody, "default": m.EngineModels})
async def models() -> Response:
    answer = await reconciler().engine.models()
    return Response(
        answer.content, status=answer.status_code, content_type=answer.headers.get("content-type", "application/json")
    )


@blueprint.post("/v1/load_lora_adapter")
@describe(request=m.KthenaLoad, responses={200: m.KthenaLoadAnswer, 202: m.KthenaLoadAnswer, **_FAILURES})
async def kthena_load() -> tuple[Response, int]:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    source = string_field(body, "source")
    assert source is not None
    output_dir = string_field(body, "output_dir", required=False) or None
    config = config_field(body)
    max_workers = body.get("max_workers")
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or not 1 <= max_workers <= 256:
            raise InvalidRequest("max_workers must be an integer from 1 to 256", field="max_workers")
        config = {**(config or {}), "max_workers": max_workers}
    async_download = bool_field(body, "async_download")
    r = reconciler()
    dest = await confine_off_loop(r.adapter_root, output_dir, "output_dir") if output_dir else None
    echo = {"lora_name": name, "source": source, "output_dir": output_dir}
    if async_download:
        r.declare(name, source.strip(), config, dest=dest)
        return jsonify(
            {"status": "started", **echo, "message": f"loading LoRA adapter '{name}' in the background"}
        ), 202
    rec = await r.load(name, source.strip(), config, dest=dest)
    return jsonify({"status": "success", **echo, "path": str(rec.path), "message": _loaded_text(name)}), 200


@blueprint.post("/v1/unload_lora_adapter")
@describe(request=m.LoraName, responses={200: m.KthenaUnloadAnswer, **_FAILURES})
async def kthena_unload() -> tuple[Response, int]:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    await reconciler().unload(name)
    return jsonify({"status": "success", "lora_name": name, "message": _unloaded_text(name)}), 200
