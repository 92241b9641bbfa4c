"""Swagger UI's script and style for `/docs`, served from the swagger-ui-bundle package.

quart-schema's page loads them from a CDN by default; a sidecar often runs where the internet is out of reach (and
a CDN script is code nobody in the cluster vetted), so the page would stay blank. The two files ship in a wheel and
are read once, on first use.
"""

from __future__ import annotations

import functools

import trio
from quart import Blueprint, Response
from quart_schema import hide
from swagger_ui_bundle import swagger_ui_path

from outrider.errors import NotFound

blueprint = Blueprint("docs_assets", __name__)

ASSETS_PREFIX = "/docs/assets"
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8"}


@functools.cache
def _read(name: str) -> bytes:
    data: bytes = (swagger_ui_path / name).read_bytes()
    return data


@blueprint.get(f"{ASSETS_PREFIX}/<asset>")
@hide  # described by hand in spec.py, with the other documentation routes
async def docs_asset(asset: str) -> Response:
    kind = ASSETS.get(asset)
    if kind is None:
        raise NotFound(f"no documentation asset named {asset!r}", field="asset")
    data = await trio.to_thread.run_sync(_read, asset)
    return Response(data, content_type=kind, headers={"Cache-Control": "public, max-age=86400"})
