"""The AIBrix and Kthena runtimes' LoRA routes, answered by outrider's reconciler.

AIBrix: `POST /v1/lora_adapter/load {"lora_name", "lora_path"}`, `POST /v1/lora_adapter/unload {"lora_name"}`,
`GET /v1/models` (the engine's list, relayed). Kthena: `POST /v1/load_lora_adapter {"lora_name", "source",
"output_dir"?, "config"?, "max_workers"?, "async_download"?}` and `POST /v1/unload_lora_adapter {"lora_name"}`.

AIBrix 0.8 gives its two routes a second, "delegation" mode, told apart as AIBrix tells it: a load whose body has
`artifact_url` ({"lora_name", "artifact_url", "credentials"?, "additional_config"?, "credentials_secret"?,
"local_dir"?}) fetches the artifact as Kthena's load fetches its `source` (same schemes, same store options and
rules: `credentials` with `additional_config` merged over them are its `config`) into `<adapter-root>/<lora_name>`
and answers JSON; an unload whose body has `cleanup_local` answers JSON, succeeds also when the engine does not have
the adapter, and with `cleanup_local: false` keeps what outrider downloaded for it.

Unlike the peers, a load here is a declaration: outrider keeps the adapter loaded (across engine restarts) until
it is unloaded. A synchronous load answers once the engine has it; if that first attempt fails the declaration is
withdrawn and the error returned (the engine's own status and message when it refused, 503 naming the engine URL
when it is down). Concurrent loads of one adapter share one fetch and one engine call. An unload answers 200 only
when the engine unloaded it, 404 when the engine does not have it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel
from quart import Blueprint, Response, current_app, jsonify

from outrider.adapters.names import AIBRIX_DELEGATION_NAME, display_source, validate_name
from outrider.errors import InvalidRequest, OutriderError, SourceAccessDenied, SourceError
from outrider.http import models as m
from outrider.http.adapters import reconciler
from outrider.http.body import bool_field, config_field, json_object, required_string, string_field, workers_field
from outrider.http.spec import describe
from outrider.option_types import MAX_DOWNLOAD_WORKERS
from outrider.runtime import Runtime
from outrider.sources.options import credentials_config
from outrider.sources.uri import parse_source
from outrider.transfer.paths import confine_any_off_loop

log = logging.getLogger(__name__)

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
@describe(request=m.AIBrixLoadBody, responses={200: m.AIBrixLoadAnswer, **_FAILURES}, text_too=[200])
async def aibrix_load() -> Response | tuple[Response, int]:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    if body.get("artifact_url") not in (None, ""):  # "" means unset, as everywhere on these routes
        return await _delegated_load(_delegated_name(name), body)
    path = string_field(body, "lora_path")
    assert path is not None
    r = reconciler()
    pvc_root = _runtime().settings.downloads.pvc_root
    engine_path = await trio.to_thread.run_sync(_engine_reads, path.strip(), r.adapter_root, pvc_root)
    await r.load(name, path.strip(), engine_path=engine_path)
    return Response(_loaded_text(name), status=200, content_type="text/plain; charset=utf-8")


def _engine_reads(path: str, adapter_root: Path, pvc_root: str | None) -> bool:
    """Thread: whether AIBrix's plain `lora_path` is a path for the engine alone: absolute, on no volume outrider
    reads adapters from (the adapter root, --pvc-root). AIBrix hands such a path to the engine as it is, and so
    does outrider (it copies nothing and deletes nothing there); a path under --pvc-root is copied as before,
    since the engine does not mount that volume. `..` is refused either way (sources/uri.py)."""
    if not path.startswith("/"):
        return False
    parse_source(path)
    real = os.path.realpath(path)
    roots = [os.path.realpath(adapter_root), *([os.path.realpath(pvc_root)] if pvc_root else [])]
    return not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _runtime() -> Runtime:
    runtime: Runtime = current_app.config["RUNTIME"]
    return runtime


def _delegated_name(name: str) -> str:
    """AIBrix's delegation mode takes only the names it can make a directory of as they are; so does outrider's
    (a 400 where AIBrix answers 500). Its plain mode, like Kthena's routes, takes any name the engine does."""
    if not AIBRIX_DELEGATION_NAME.match(name):
        raise InvalidRequest(
            f"lora_name must match {AIBRIX_DELEGATION_NAME.pattern} in AIBrix's delegation mode", field="lora_name"
        )
    return name


async def _delegated_load(name: str, body: dict[str, Any]) -> tuple[Response, int]:
    url = required_string(body, "artifact_url").strip()
    # Checked for its type only: AIBrix's runtime writes under its own directory whatever `local_dir` says, and so
    # does outrider (--aibrix-adapter-dir, AIBrix's /tmp/aibrix/adapters: the emptyDir its webhook mounts in every
    # container, so the engine sees the same path).
    string_field(body, "local_dir", required=False)
    credentials = body.get("credentials")
    with _naming_delegation_fields():
        config = credentials_config(
            ("credentials", credentials), ("additional_config", body.get("additional_config")), ignore_unknown=True
        )
    secret = string_field(body, "credentials_secret", required=False)
    if secret is not None:
        # AIBrix reads the files of a secret mounted under /var/run/secrets/aibrix/<name>, and goes on without
        # credentials when there is none. outrider reads no secret files: a pod's secrets reach it as its env
        # (envFrom), which it reads already, and a caller choosing among the pod's secrets by name would be a
        # second, less visible way to hand the pod's keys to a request. It goes on with the pod's own credentials.
        log.info("adapter %s: credentials_secret is not read (outrider reads no secret files)", name)
    dest = Path(_runtime().settings.aibrix_adapter_dir) / name
    try:
        with _naming_delegation_fields():
            rec = await reconciler().load(name, url, config, dest=dest)
    except SourceAccessDenied as exc:
        if secret is None or credentials:
            raise
        hinted = exc.clone()
        hinted.message += (
            "; credentials_secret is not read (outrider reads no secret files): pass the keys in credentials, or "
            "give the pod the store's credentials in its env (the secret as envFrom) or a workload identity"
        )
        raise hinted from None
    answer = {
        "status": "success",
        "message": f"Successfully loaded adapter {name} from {display_source(url)}",
        "local_path": str(rec.path),
        "engine_response": {"message": _loaded_text(name)},
    }
    return jsonify(answer), 200


@contextmanager
def _naming_delegation_fields() -> Iterator[None]:
    """Errors name the delegation body's fields: its `artifact_url` is the fetch's `source`, its `credentials` the
    store `config`, and `<adapter-root>/<lora_name>` the destination. A store refusing access with no field to
    blame refused the credentials it was given (the request's, or the pod's for want of them)."""
    try:
        yield
    except OutriderError as exc:
        field = exc.field
        if field in ("source", None) and isinstance(exc, SourceError):
            field = "credentials" if isinstance(exc, SourceAccessDenied) and field is None else "artifact_url"
        else:
            field = {"config": "credentials", "output_dir": "lora_name", "name": "lora_name"}.get(field or "", field)
        if field == exc.field:
            raise
        renamed = exc.clone()  # the adapter's record keeps the error too, and other callers may be handed it
        renamed.field = field
        raise renamed from None


@blueprint.post("/v1/lora_adapter/unload")
@describe(request=m.AIBrixUnloadBody, responses={200: m.AIBrixUnloadAnswer, **_FAILURES}, text_too=[200])
async def aibrix_unload() -> Response | tuple[Response, int]:
    body = await json_object()
    name = validate_name(body.get("lora_name"))
    if "cleanup_local" not in body:
        await reconciler().unload(name)
        return Response(_unloaded_text(name), status=200, content_type="text/plain; charset=utf-8")
    _delegated_name(name)
    cleanup = bool_field(body, "cleanup_local", default=True)  # null: AIBrix's default, true
    # A controller retrying an unload must not be refused because the first try succeeded: AIBrix answers success
    # here whether or not the engine had the adapter.
    await reconciler().unload(name, keep_files=not cleanup, missing_ok=True)
    return jsonify({"status": "success", "message": f"Successfully unloaded adapter {name}"}), 200


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
    max_workers = workers_field(body, "max_workers", MAX_DOWNLOAD_WORKERS)
    if max_workers is not None:
        config = {**(config or {}), "max_workers": max_workers}
    async_download = bool_field(body, "async_download")
    r = reconciler()
    # Kthena's manifests name output dirs under /models: any directory under the adapter root or the model root
    # (both volumes outrider writes and the engine mounts) is taken; one elsewhere is refused naming both flags.
    dest = await confine_any_off_loop(r.roots, output_dir, "output_dir") if output_dir else None
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
