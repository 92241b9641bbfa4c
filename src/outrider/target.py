"""The engine target: the one engine outrider talks to now (its base URL, metrics URL and served model name).

It is the configured engine (`-B`, `--model` or the model it serves) until the engine lifecycle launches one; then
the newest launched engine on its way or serving; back to the configured engine when none is left. One task owns
it (`TargetKeeper.run`): the supervisor only says which engine it would follow (`follow`), and the task publishes
the new target, then asks the engine for its served model name whenever it is not known (every change of target
starts that over). Every consumer reads `current` (or one of its fields, through the callables it was given): the
metrics scrape, /ready, the LoRA reconciler's client and the `/v1/models` relay that uses it, and KV-event replay
discovery. Nothing else writes it.
"""

from __future__ import annotations

import dataclasses
import logging

import httpx
import trio

from outrider.engines.client import auth_headers, served_base_model
from outrider.settings import Settings

log = logging.getLogger("outrider.target")

# The longest wait between two asks for the served model name of an engine that does not answer yet.
DISCOVERY_MAX_DELAY = 30.0


@dataclasses.dataclass(frozen=True)
class EngineTarget:
    """Where the engine is and what it serves. `model` None: not known yet (being asked)."""

    base_url: str
    metrics_url: str
    model: str | None
    launched: str | None = None  # the launched engine's model name; None for the configured engine


class TargetKeeper:
    """Owns the engine target (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._configured = EngineTarget(
            settings.engine_base_url.rstrip("/"), settings.engine_metrics_url, settings.model
        )
        self._current = self._configured
        self._wanted = self._configured
        self._wake = trio.Event()
        self.generation = 0  # how many times the target changed

    @property
    def current(self) -> EngineTarget:
        return self._current

    def base_url(self) -> str:
        return self._current.base_url

    def metrics_url(self) -> str:
        return self._current.metrics_url

    def model(self) -> str | None:
        return self._current.model

    def follow(self, launched: EngineTarget | None) -> None:
        """The engine the supervisor would have outrider follow (None: the configured one). Applied by `run`."""
        self._wanted = launched if launched is not None else self._configured
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self._settings
        async with httpx.AsyncClient(
            timeout=settings.scrape_timeout, headers=auth_headers(settings.engine_api_key)
        ) as c:
            task_status.started()
            while True:
                self._publish(self._wanted)
                self._wake = trio.Event()
                if self._current.model is None:
                    await self._discover(c)
                await self._wake.wait()

    def _publish(self, target: EngineTarget) -> None:
        if target == self._current:
            return
        self._current = target
        self.generation += 1
        log.info("engine target: %s (metrics %s, model %s)", target.base_url, target.metrics_url, target.model)

    async def _discover(self, client: httpx.AsyncClient) -> None:
        """Ask the target for its served model name until it answers or the target changes (`_wake`)."""
        delay = self._settings.scrape_interval
        base = self._current.base_url
        while not self._wake.is_set():
            try:
                model = await served_base_model(client, base)
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("model discovery at %s: %s", base, exc)
                model = None
            if self._wake.is_set():
                return  # the target changed meanwhile: that answer is not its
            if model is not None:
                self._current = dataclasses.replace(self._current, model=model)
                log.info("engine at %s serves model %r", base, model)
                return
            with trio.move_on_after(delay):
                await self._wake.wait()
            delay = min(delay * 2, DISCOVERY_MAX_DELAY)
