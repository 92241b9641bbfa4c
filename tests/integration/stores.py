"""Set-up the bucket store tests share: moto's S3 server holding the model tree, and a Source opened on a store."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from outrider.sources import Source, SourceOptions, open_source
from tests.servers.moto import MotoServer


def moto_fixture(
    bucket: str,
    prefix: str,
    tree: Mapping[str, bytes],
    more: Mapping[str, bytes] | None = None,
    *,
    then: Callable[[MotoServer], None] | None = None,
) -> Any:
    """A module-scoped fixture (assign it to `moto` in the test module): moto's S3 server with `bucket` holding
    `tree` under `prefix`, `more` (keys as given), and the neighbours a listing of `prefix` must not show (a sibling
    prefix, a folder marker); then `then(server)` for what one module adds (objects, users, authentication).

    Typed Any: what pytest.fixture returns is pytest's own business."""

    @pytest.fixture(scope="module")
    def moto() -> Iterator[MotoServer]:
        server = MotoServer()
        server.start()
        try:
            files = {f"{prefix}/{path}": data for path, data in tree.items()}
            files.update({f"{prefix}-sibling/x.bin": b"x", f"{prefix}/folder-marker/": b""})
            files.update(more or {})
            server.seed(bucket, files)
            if then is not None:
                then(server)
            yield server
        finally:
            server.stop()

    return moto


def signed_moto(bucket: str, objects: Mapping[str, bytes]) -> Any:
    """A module-scoped fixture (assign it to `moto`): moto's S3 server holding `objects` (keys as given) in
    `bucket`, checking signatures, so an anonymous or wrongly signed request is S3's 403 as on a real store."""

    @pytest.fixture(scope="module")
    def moto() -> Iterator[MotoServer]:
        server = MotoServer()
        server.start()
        try:
            server.seed(bucket, dict(objects))
            server.enforce_auth(True)
            yield server
        finally:
            server.stop()

    return moto


def open_bucket(
    source: str, endpoint: str, keys: tuple[str, str], region: str, /, *, max_workers: int = 4, **changes: Any
) -> Source:
    """The Source for `source` with these keys at `endpoint`; `changes` replace any SourceOptions field (the
    endpoint and region too: hence the positional-only parameters)."""
    options = SourceOptions(access_key=keys[0], secret_key=keys[1], endpoint=endpoint, region=region)
    options = dataclasses.replace(options, **changes)
    return open_source(source, options, pvc_root=None, max_workers=max_workers)
