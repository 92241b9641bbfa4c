"""In-process outrider and a stand-in engine, both on real loopback sockets."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio

from outrider.runtime import Runtime
from outrider.service import serve
from outrider.settings import Settings
from tests.fakes.engine import FakeEngine
from tests.spec_check import SpecCheck


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "condition") -> None:
    """Poll `check` until it holds; fail the test with `what` if it does not within `within` seconds.

    Polling is the point: the state lives in another server, reached over a socket, with no event to wait on."""
    with trio.move_on_after(within):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@dataclasses.dataclass
class Running:
    runtime: Runtime
    url: str
    client: httpx.AsyncClient
    shutdown: trio.Event


async def start_outrider(nursery: trio.Nursery, settings: Settings, **serving: Any) -> Running:
    """outrider serving `settings` in `nursery`; `serving` goes to service.serve (e.g. `lifecycle=`)."""
    shutdown = trio.Event()
    runtime, binds = await nursery.start(functools.partial(serve, settings, shutdown, **serving))
    url = binds[0]
    return Running(runtime, url, await checked_client(url, request_timeout=5.0), shutdown)


async def checked_client(url: str, request_timeout: float) -> httpx.AsyncClient:
    """A client for outrider at `url` whose every answer is checked against the live /openapi.json."""
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout) as loader:  # tests may open `client`
        check = await SpecCheck.load(loader)
    client = httpx.AsyncClient(base_url=url, timeout=request_timeout)
    client.event_hooks["response"] = [check.hook]
    return client


def fast_settings(engine: FakeEngine, **changes: object) -> Settings:
    return settings_for(engine.base_url, **changes)


def settings_for(engine_url: str, **changes: object) -> Settings:
    """Settings for a vLLM at `engine_url` that scrape and go stale fast, with every metrics profile but gie."""
    base = Settings(
        engine="vllm",
        engine_base_url=engine_url,
        host="127.0.0.1",
        port=0,
        pod="test-pod",
        scrape_interval=0.1,
        scrape_timeout=0.3,
        metrics_max_age=0.5,
        metrics_profiles=("outrider", "kthena", "aibrix"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def vllm_engine(nursery: trio.Nursery, engine_pages: dict[str, str]) -> AsyncIterator[FakeEngine]:
    engine = FakeEngine(engine_pages["vllm-0.32.0-cpu.prom"])
    await engine.start(nursery)
    yield engine
    engine.stop()
