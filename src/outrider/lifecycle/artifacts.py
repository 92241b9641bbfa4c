"""The model directory an engine is handed: in place under the model root, or fetched there by the download engine."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import trio

from outrider.adapters.names import display_source
from outrider.errors import InvalidRequest, OutriderError, SourceError
from outrider.transfer.jobs import JobManager
from outrider.transfer.paths import confine_off_loop

log = logging.getLogger("outrider.lifecycle")


async def model_directory(
    downloads: JobManager, model_root: str, model_name: str, source: str, config: dict[str, str] | None
) -> Path:
    """A directory already under the model root is used in place; anything else is fetched by the download engine
    into `<model root>/<model name>` (resumed, verified)."""
    source = source.strip()
    if source.startswith("/"):
        real = await trio.to_thread.run_sync(os.path.realpath, source)
        root = await trio.to_thread.run_sync(os.path.realpath, model_root)
        if real.startswith(root.rstrip("/") + "/"):
            path = await confine_off_loop(model_root, source, "artifact_url")
            if not await trio.to_thread.run_sync(os.path.isdir, path):
                raise InvalidRequest(f"artifact_url {source!r} is not a directory", field="artifact_url")
            return path
    dest = await confine_off_loop(model_root, model_name, "model_name")
    log.info("fetching %s for %s into %s", display_source(source), model_name, dest)
    with naming_the_artifact():
        return await downloads.fetch(source, config, dest)


@contextlib.contextmanager
def naming_the_artifact() -> Iterator[None]:
    """Errors name the fields the activation calls them by: the download engine's `source` is `artifact_url`, its
    `config` is `credentials`, its `dest` (`<model root>/<model name>`) is `model_name`. Renamed on a clone: the
    download job keeps its error, and other callers may be handed it."""
    try:
        yield
    except OutriderError as exc:
        if isinstance(exc, SourceError) and exc.field in (None, "source"):
            field = "artifact_url"
        elif exc.field in ("dest", "config"):
            field = "model_name" if exc.field == "dest" else "credentials"
        else:
            raise
        renamed = exc.clone()
        renamed.field = field
        raise renamed from None
