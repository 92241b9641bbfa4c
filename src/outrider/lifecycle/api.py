"""What outrider asks a running engine it launched, over HTTP on the pod's loopback: is it healthy, put it to sleep,
wake it, is it asleep, and how busy it is.

Sleep and wake are vLLM's development routes (`POST /sleep?level=N`, `POST /wake_up`, `GET /is_sleeping`), which
exist only when vLLM runs with VLLM_SERVER_DEV_MODE=1. An engine that refuses is an EngineRefused carrying its own
status and message (4xx relayed, 5xx as 502); one that does not answer is EngineUnavailable (503).
"""

from __future__ import annotations

import dataclasses

import httpx
from prometheus_client.parser import text_string_to_metric_families

from outrider.errors import EngineRefused, EngineUnavailable

# A health probe that takes longer than this counts as "not ready": a serving engine answers in milliseconds.
PROBE_TIMEOUT = 1.0
# How long vLLM may take to sleep or wake: a first sleep copies the weights to host memory (AIBrix measured 11.7 s
# for a 32B model), and AIBrix's controller gives the whole call 60 s.
SLEEP_WAKE_TIMEOUT = 50.0
# Request metrics read for the snapshot; only these lines of a page (which may be large) are parsed.
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
_SUCCESS = ("vllm:request_success", "sglang:num_requests")
_STEMS = tuple(name.split(":", 1)[1] for name in (*_RUNNING, *_WAITING, *_SUCCESS))


@dataclasses.dataclass(frozen=True)
class Activity:
    """Request counts from an engine's metrics; `observed` False when none could be read (never read as idle)."""

    observed: bool = False
    running: int = 0
    waiting: int = 0
    success_total: int | None = None


def loopback(host: str) -> str:
    """Where outrider reaches an engine listening on `host` (all addresses are reached on the loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class EngineApi:
    """One client for every engine outrider launched (no connection is kept: an engine restarted on the same
    port must never be reached through a connection to the one before it)."""

    def __init__(self, host: str, api_key: str | None) -> None:
        self._host = loopback(host)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, limits=httpx.Limits(max_keepalive_connections=0))

    def url(self, port: int, path: str) -> str:
        return f"http://{self._host}:{port}{path}"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def healthy(self, port: int) -> bool:
        try:
            response = await self._client.get(self.url(port, "/health"), timeout=PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _call(self, method: str, port: int, path: str) -> httpx.Response:
        try:
            response = await self._client.request(method, self.url(port, path), timeout=SLEEP_WAKE_TIMEOUT)
        except httpx.TimeoutException:
            raise EngineUnavailable(f"the engine on port {port} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the engine on port {port} is unavailable: {exc}") from None
        if response.status_code >= 400:
            text = response.text.strip()[:500] or f"HTTP {response.status_code}"
            raise EngineRefused(
                f"the engine refused {method} {path}: {text}", status=response.status_code, reason="rejected"
            )
        return response

    async def sleep(self, port: int, level: int) -> None:
        await self._call("POST", port, f"/sleep?level={level}")

    async def wake(self, port: int) -> None:
        await self._call("POST", port, "/wake_up")

    async def is_sleeping(self, port: int) -> bool:
        response = await self._call("GET", port, "/is_sleeping")
        try:
            value = response.json()["is_sleeping"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, bool):
            raise EngineRefused(
                "the engine's /is_sleeping answer has no is_sleeping true/false", status=502, reason="rejected"
            )
        return value

    async def activity(self, port: int, model: str) -> Activity:
        """Request counts for `model` from the engine's /metrics (series of other models are not counted)."""
        try:
            response = await self._client.get(self.url(port, "/metrics"), timeout=PROBE_TIMEOUT)
        except httpx.HTTPError:
            return Activity()
        if response.status_code != 200:
            return Activity()
        return parse_activity(response.text, model)


def parse_activity(page: str, model: str) -> Activity:
    lines = "\n".join(line for line in page.splitlines() if any(stem in line for stem in _STEMS))
    sums = {"running": 0.0, "waiting": 0.0, "success": 0.0}
    found: set[str] = set()
    try:
        for family in text_string_to_metric_families(lines):
            for sample in family.samples:
                if sample.labels.get("model_name") != model:
                    continue
                name = sample.name.removesuffix("_total")
                for key, names in (("running", _RUNNING), ("waiting", _WAITING), ("success", _SUCCESS)):
                    if name in names:
                        sums[key] += sample.value
                        found.add(key)
    except ValueError:
        return Activity()
    return Activity(
        observed=bool(found),
        running=max(0, int(sums["running"])),
        waiting=max(0, int(sums["waiting"])),
        success_total=max(0, int(sums["success"])) if "success" in found else None,
    )
