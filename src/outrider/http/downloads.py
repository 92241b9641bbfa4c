"""Model download routes: outrider's own (`/v1/downloads`) and the Kthena and AIBrix spellings.

Native:
  POST /v1/downloads {source, dest, config?, include?, exclude?, workers?, chunk_size?, wait?}
       -> 202 job (200 with the finished job when wait=true; the job's error status when it failed)
  GET /v1/downloads, GET /v1/downloads/{id}, DELETE /v1/downloads/{id} (cancels; answers once stopped)
Kthena: POST /v1/download_model {source, output_dir, config (object or JSON string), max_workers, async_download}
AIBrix: POST /v1/model/download {model_uri, local_dir, model_name, download_extra_config}; GET /v1/model/list

Every destination is confined to --model-root before anything else happens. Bodies are validated strictly: a
non-JSON body or a wrong type is a 400 naming the field, never a 500.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from pydantic import BaseModel
from quart import Blueprint, Response, current_app, jsonify

from outrider.errors import InvalidRequest, OutriderError, error_body
from outrider.http import models as m
from outrider.http.body import (
    bool_field,
    config_field,
    json_object,
    required_string,
    strict_body,
    string_field,
    workers_field,
)
from outrider.http.spec import describe
from outrider.option_types import MAX_DOWNLOAD_WORKERS, parse_suffixes, size
from outrider.runtime import Runtime
from outrider.transfer import state
from outrider.transfer.jobs import DownloadRequest, Job, JobManager
from outrider.transfer.paths import confine_off_loop

blueprint = Blueprint("downloads", __name__)

# How long DELETE waits for a job's threads to notice before answering with the job as it then is.
CANCEL_WAIT = 10.0
# What starting a download can end with besides success: a bad body, source or destination (400), a store's
# refusal (403, 404), an overlapping job or a cancelled one (409), a store failing (502) or unreachable (503),
# a full disk (507).
_FAILURE_STATUSES = (400, 403, 404, 409, 502, 503, 507)
# How deep GET /v1/model/list looks under the model root for downloaded directories.
_LIST_DEPTH = 4


# -- body parsing -----------------------------------------------------------------------------------------------


def _chunk_size(value: int | str | None) -> int | None:
    """The chunk size in bytes, from a validated body's number or size string ('16MiB')."""
    if value is None:
        return None
    try:
        return size(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"chunk_size: {exc}", field="chunk_size") from None


def _globs(value: str | list[str] | None) -> tuple[str, ...]:
    """One glob or a list of them, from a validated body, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# -- shared ------------------------------------------------------------------------------------------------------


def _runtime() -> Runtime:
    runtime: Runtime = current_app.config["RUNTIME"]
    return runtime


def _manager() -> JobManager:
    manager = _runtime().downloads
    if manager is None:
        raise OutriderError("downloads are not available in this process")
    return manager


def _model_root() -> str:
    return _runtime().settings.downloads.model_root


def _failure(job: Job, extra: Mapping[str, Any] | None = None) -> tuple[Response, int]:
    """The answer for a job that ended without completing, in the shared error shape plus the job."""
    if job.state == "cancelled":
        body = error_body("cancelled", f"download job {job.id} was cancelled")
        status = 409
    else:
        error = job.error or OutriderError("the download failed")
        body, status = error.to_json(), error.status
    body.update(extra or {})
    body["job"] = job.to_json()
    return jsonify(body), status


# -- native ------------------------------------------------------------------------------------------------------


_JOB_FAILURES: dict[int | str, type[BaseModel]] = {status: m.JobFailure for status in _FAILURE_STATUSES}


@blueprint.post("/v1/downloads")
@describe(request=m.DownloadCreate, responses={200: m.Job, 202: m.Job, **_JOB_FAILURES})
async def create_download() -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
    body = await strict_body(m.DownloadCreate)
    dest = await confine_off_loop(_model_root(), body.dest, "dest")
    job = await _manager().submit(
        DownloadRequest(
            source=body.source,
            dest=dest,
            config=body.config.model_dump(exclude_none=True) if body.config is not None else None,
            include=_globs(body.include),
            exclude=_globs(body.exclude),
            workers=body.workers,
            chunk_size=_chunk_size(body.chunk_size),
        )
    )
    if body.wait:
        await job.done.wait()
        if job.state != "completed":
            return _failure(job)
        return jsonify(job.to_json()), 200
    return jsonify(job.to_json()), 202, {"Location": f"/v1/downloads/{job.id}"}


@blueprint.get("/v1/downloads")
@describe(responses={200: m.JobList})
async def list_downloads() -> Response:
    return jsonify({"object": "list", "data": [job.to_json() for job in _manager().list()]})


@blueprint.get("/v1/downloads/<job_id>")
@describe(responses={200: m.Job, 404: m.ErrorBody})
async def get_download(job_id: str) -> Response:
    return jsonify(_manager().get(job_id).to_json())


@blueprint.delete("/v1/downloads/<job_id>")
@describe(responses={200: m.Job, 404: m.ErrorBody})
async def cancel_download(job_id: str) -> Response:
    job = _manager().cancel(job_id)
    with trio.move_on_after(CANCEL_WAIT):
        await job.done.wait()
    return jsonify(job.to_json())


# -- Kthena ------------------------------------------------------------------------------------------------------


@blueprint.post("/v1/download_model")
@describe(
    request=m.KthenaDownload,
    responses={
        200: m.KthenaDownloadAnswer,
        202: m.KthenaDownloadAnswer,
        **{status: m.KthenaDownloadFailure for status in _FAILURE_STATUSES},
    },
)
async def kthena_download_model() -> tuple[Response, int]:
    body = await json_object()
    source = required_string(body, "source")
    output_dir_raw = required_string(body, "output_dir")
    output_dir = await confine_off_loop(_model_root(), output_dir_raw, "output_dir")
    config = config_field(body, "config")
    workers = workers_field(body, "max_workers", MAX_DOWNLOAD_WORKERS)
    async_download = bool_field(body, "async_download")
    job = await _manager().submit(
        DownloadRequest(source=source, dest=output_dir, config=config, workers=workers, dest_field="output_dir")
    )
    shape = {"source": job.source, "output_dir": str(output_dir), "job_id": job.id}
    if async_download:
        return jsonify({"status": "started", "message": f"download of {job.source} started", **shape}), 202
    await job.done.wait()
    if job.state != "completed":
        message = job.error.message if job.error else f"download job {job.id} was {job.state}"
        return _failure(job, {"status": "failed", "message": message, **shape})
    return jsonify({"status": "completed", "message": f"downloaded {job.source} to {output_dir}", **shape}), 200


# -- AIBrix ------------------------------------------------------------------------------------------------------

# download_extra_config keys outrider itself acts on; the rest (credentials, endpoint, revision...) go to the store.
_AIBRIX_OWN_KEYS = ("num_threads", "allow_file_suffix", "force_download")
# AIBrix's DownloadExtraConfig spells the store's keys `ak` and `sk`.
_AIBRIX_KEYS = {"ak": "access_key", "sk": "secret_key"}


def _aibrix_status(job: Job) -> str:
    return {"completed": "downloaded", "queued": "downloading", "running": "downloading"}.get(job.state, job.state)


@blueprint.post("/v1/model/download")
@describe(request=m.AIBrixDownload, responses={200: m.ModelCard, **{s: m.ErrorBody for s in _FAILURE_STATUSES}})
async def aibrix_model_download() -> tuple[Response, int]:
    body = await json_object()
    model_uri = required_string(body, "model_uri")
    root = _model_root()
    local_dir_raw = string_field(body, "local_dir", required=False)
    model_name = string_field(body, "model_name", required=False) or model_uri.rstrip("/").rsplit("/", 1)[-1]
    if not model_name or "/" in model_name or "\\" in model_name or model_name in (".", ".."):
        raise InvalidRequest(f"model_name must be one directory name, got {model_name!r}", field="model_name")
    # local_dir is the parent of <model_name>: AIBrix's own requests name DOWNLOADER_LOCAL_DIR, the root itself.
    base = root if local_dir_raw is None else local_dir_raw
    dest = await confine_off_loop(root, os.path.join(base, model_name), "local_dir" if local_dir_raw else "model_name")
    config = {_AIBRIX_KEYS.get(k, k): v for k, v in (config_field(body, "download_extra_config") or {}).items()}
    workers = workers_field(config, "num_threads", MAX_DOWNLOAD_WORKERS)
    suffixes = config.get("allow_file_suffix")
    if suffixes is not None and not isinstance(suffixes, str | list):
        raise InvalidRequest("allow_file_suffix must be a list or a comma-separated string", field="allow_file_suffix")
    store_config = {k: v for k, v in config.items() if k not in _AIBRIX_OWN_KEYS}
    job = await _manager().submit(
        DownloadRequest(
            source=model_uri,
            dest=dest,
            config=store_config or None,
            workers=workers,
            suffixes=None if suffixes is None else _suffix_tuple(suffixes),
            dest_field="model_name",
        )
    )
    answer = {
        "model_name": model_name,
        "model_root_path": str(dest),
        "source": job.source,
        "model_status": _aibrix_status(job),
    }
    return jsonify(answer), 200


def _suffix_tuple(value: str | list[Any]) -> tuple[str, ...]:
    joined = value if isinstance(value, str) else ",".join(str(v) for v in value)
    return parse_suffixes(joined)


@blueprint.get("/v1/model/list")
@describe(responses={200: m.ModelList})
async def aibrix_model_list() -> Response:
    manager = _manager()
    root = Path(_model_root())
    found = await trio.to_thread.run_sync(_downloaded_dirs, root)
    cards: dict[Path, dict[str, Any]] = {}
    for path, record in found:
        cards[path] = {
            "model_name": path.name,
            "model_root_path": str(path),
            "source": record.source,
            "model_status": "downloaded" if record.complete else "incomplete",
        }
    for job in manager.list():  # the newest job for a directory decides its status
        if job.active or job.dest not in cards or job.state == "failed":
            cards[job.dest] = {
                "model_name": job.dest.name,
                "model_root_path": str(job.dest),
                "source": job.source,
                "model_status": _aibrix_status(job),
            }
    return jsonify({"object": "list", "data": sorted(cards.values(), key=lambda c: c["model_root_path"])})


def _downloaded_dirs(root: Path) -> list[tuple[Path, state.Record]]:
    """Thread: directories under `root` that carry a download record (not descending into them)."""
    out: list[tuple[Path, state.Record]] = []
    if not root.is_dir():
        return out
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        record = state.load_record(here) if here != root else None
        if record is not None:
            out.append((here, record))
            dirs[:] = []
        elif len(here.relative_to(root).parts) >= _LIST_DEPTH:
            dirs[:] = []
    return out
