"""The engine's OpenAI-compatible surface that every engine shares (today: the model list)."""

from __future__ import annotations

from typing import Any

import httpx


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Headers for every call to the engine: its API key as a bearer token when one is configured."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def served_base_model(client: httpx.AsyncClient, base_url: str) -> str | None:
    """The engine's base model name from `GET /v1/models` (adapters are listed there too, with a parent)."""
    response = await client.get(base_url.rstrip("/") + "/v1/models")
    response.raise_for_status()
    data: Any = response.json()
    for entry in data.get("data", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and not entry.get("parent"):
            return str(entry["id"])
    return None
