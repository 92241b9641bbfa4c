"""The engine's HTTP surface that every engine shares: the model list, and one client for admin calls.

`EngineClient` is the only way outrider's domain talks to the engine's API. Every call carries the engine API
key as a bearer token. A transport failure (refused, reset, timeout) becomes `EngineUnavailable` naming the
engine URL, so a caller can tell "the engine is down" from "the engine said no" (`EngineRefused`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import SecretStr

from outrider.errors import EngineUnavailable

# Listing models is cheap; a slow answer means a stuck engine and the reconcile pass should move on.
LIST_TIMEOUT = 5.0
# Loading an adapter reads its weights from the volume and may take seconds on a busy engine.
ADMIN_TIMEOUT = 120.0


def auth_headers(api_key: SecretStr | None) -> dict[str, str]:
    """Headers for every call to the engine: its API key as a bearer token when one is configured."""
    return {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}


async def served_base_model(client: httpx.AsyncClient, base_url: str) -> str | None:
    """The engine's base model name from `GET /v1/models` (adapters are listed there too, with a parent)."""
    response = await client.get(base_url.rstrip("/") + "/v1/models")
    response.raise_for_status()
    data: Any = response.json()
    for entry in data.get("data", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and not entry.get("parent"):
            return str(entry["id"])
    return None


@dataclasses.dataclass(frozen=True)
class EngineAdapter:
    """One LoRA adapter as the engine lists it in `/v1/models`: name, and the path it was loaded from."""

    name: str
    path: str | None
    parent: str | None


class EngineClient:
    """An httpx client bound to one engine's base URL and API key. Close it with `aclose`."""

    def __init__(self, base_url: str | Callable[[], str], api_key: SecretStr | None) -> None:
        # A callable is the engine target's base URL (outrider.target), read at every call.
        if callable(base_url):
            self._base_url = base_url
        else:
            fixed = base_url.rstrip("/")
            self._base_url = lambda: fixed
        self._http = httpx.AsyncClient(headers=auth_headers(api_key), timeout=ADMIN_TIMEOUT)

    @property
    def base_url(self) -> str:
        return self._base_url().rstrip("/")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, time_limit: float = ADMIN_TIMEOUT
    ) -> httpx.Response:
        """One call to the engine. Raises EngineUnavailable when it cannot be reached or does not answer."""
        url = self.base_url + path
        try:
            return await self._http.request(method, url, json=json, timeout=time_limit)
        except httpx.TimeoutException:
            raise EngineUnavailable(f"engine at {self.base_url} did not answer {method} {path} in time") from None
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"engine at {self.base_url} is unavailable: {exc}") from None

    async def models(self) -> httpx.Response:
        """The raw `GET /v1/models` answer (relayed as is by the AIBrix-compatible route)."""
        return await self.request("GET", "/v1/models", time_limit=LIST_TIMEOUT)

    async def list_adapters(self) -> dict[str, EngineAdapter]:
        """The LoRA adapters the engine has loaded now: the `/v1/models` entries that have a parent model."""
        response = await self.models()
        if response.status_code != 200:
            raise EngineUnavailable(
                f"engine at {self.base_url} answered GET /v1/models with HTTP {response.status_code}"
            )
        try:
            data: Any = response.json()
        except ValueError:
            raise EngineUnavailable(f"engine at {self.base_url} answered GET /v1/models with non-JSON") from None
        found: dict[str, EngineAdapter] = {}
        for entry in data.get("data", []) if isinstance(data, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry.get("parent"):
                continue
            root = entry.get("root")
            found[entry["id"]] = EngineAdapter(
                name=entry["id"], path=root if isinstance(root, str) else None, parent=str(entry["parent"])
            )
        return found
