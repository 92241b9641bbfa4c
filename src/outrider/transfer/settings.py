"""Where downloads may land and how hard they pull: the download options' group of `Settings` (see settings.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

from outrider.errors import InvalidSource
from outrider.option_types import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DOWNLOAD_WORKERS,
    Dir,
    Size,
    Suffixes,
    Switch,
    Verify,
    Workers,
    option,
)
from outrider.sources import parse_source
from outrider.sources.options import SourceOptions


def _pod_model_source(value: str) -> str:
    try:
        parse_source(value)
    except InvalidSource as exc:
        raise ValueError(exc.message) from None
    return value


PodModelSource = Annotated[str, AfterValidator(_pod_model_source)]


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True))  # code names fields; cli.py reads the variables
class DownloadSettings:
    """Where downloads may land and how hard they pull."""

    model_root: Dir = option("/models", "every download must land under it", "--model-root", "DOWNLOADER_LOCAL_DIR")
    pvc_root: Dir | None = option(None, "`pvc://` sources must be under it (default: refused)", "--pvc-root")
    workers: Workers = option(
        DEFAULT_DOWNLOAD_WORKERS, "ranged reads in flight, all jobs", "--download-workers", "DOWNLOADER_NUM_THREADS"
    )
    chunk_size: Size = option(DEFAULT_CHUNK_SIZE, "bytes per ranged read", "--chunk-size")
    allow_request_endpoints: Switch = option(False, "requests may name a store endpoint", "--allow-request-endpoints")
    allow_suffixes: Suffixes = option((), "only these suffixes", "--allow-file-suffix", "DOWNLOADER_ALLOW_FILE_SUFFIX")
    verify_checksums: Verify = option(
        True, "checksum (default): sizes and checksums (MD5: 1.3 CPU-s/GiB); size: sizes only", "--verify"
    )
    # The pod's own model, fetched at start-up (pod_model.py); the model name's directory is AIBrix's --model-name.
    pod_model: PodModelSource | None = option(
        None, "the pod's model, fetched under --model-root at start-up (GET /startup)", "--model-uri", "--pod-model"
    )
    pod_model_dir: str | None = option(
        None, "the pod model's directory under --model-root (default: the source's last name)", "--pod-model-dir"
    )
    # The pod's own store credentials and endpoints from its env (Kthena and AIBrix spellings); a request's
    # `config` overrides them, and they are never sent to an endpoint a request names (see sources/options.py).
    source_defaults: SourceOptions = Field(default_factory=SourceOptions, repr=False)
