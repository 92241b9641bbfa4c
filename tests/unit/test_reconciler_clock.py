"""The reconcile loop's timing on trio's MockClock: what the reconciler promises about time, checked with none passing.

A down engine is polled once per interval (no backoff, no giving up), and a restarted engine gets every adapter
back within one interval of answering again. The engine and its LoRA API live in memory, so nothing but the
test's `jump` moves the clock, and `wait_all_tasks_blocked` says when the loop has acted on it."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from outrider.adapters.fetch import VolumeFetcher
from outrider.adapters.reconciler import Reconciler
from outrider.engines.base import LoraApi
from outrider.engines.client import EngineAdapter, EngineClient
from outrider.errors import EngineUnavailable

INTERVAL = 32.0
EARLY = 0.5  # INTERVAL - EARLY + EARLY == INTERVAL exactly in binary floating point
BASE_URL = "http://engine.invalid"  # never dialled: every call is answered in memory


class MemoryEngine(EngineClient):
    """An engine in memory: `up` says whether it answers; `loaded` is what its /v1/models lists."""

    def __init__(self) -> None:
        super().__init__(BASE_URL, None)
        self.up = True
        self.loaded: dict[str, str] = {}
        self.lists = 0  # GET /v1/models asked, answered or not

    async def list_adapters(self) -> dict[str, EngineAdapter]:
        self.lists += 1
        if not self.up:
            raise EngineUnavailable(f"engine at {BASE_URL} is unavailable: connection refused")
        return {name: EngineAdapter(name, path, "tiny") for name, path in self.loaded.items()}


class MemoryLora(LoraApi):
    async def load(self, engine: EngineClient, name: str, path: str) -> None:
        assert isinstance(engine, MemoryEngine)
        if not engine.up:
            raise EngineUnavailable(f"engine at {BASE_URL} is unavailable: connection refused")
        engine.loaded[name] = path

    async def unload(self, engine: EngineClient, name: str) -> None:
        assert isinstance(engine, MemoryEngine)
        engine.loaded.pop(name, None)


async def _advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Let `seconds` pass, then wait until the loop has done everything that became due."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_down_engine_is_polled_each_interval_and_repaired_one_interval_after_it_answers(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    engine = MemoryEngine()
    r = Reconciler(engine, MemoryLora(), VolumeFetcher(tmp_path), adapter_root=tmp_path, interval=INTERVAL)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.run)
        tickets = [r.declare(name, str(tmp_path / name)) for name in ("a", "b")]
        for ticket in tickets:
            await r.wait_loaded(ticket)  # the volume fetch runs in a thread; the clock stays where it is
        await trio.testing.wait_all_tasks_blocked()
        loaded = dict(engine.loaded)
        assert set(loaded) == {"a", "b"}

        engine.up = False  # the engine restarts: down for three intervals, then back with nothing loaded
        engine.loaded.clear()
        for down in range(1, 4):
            lists = engine.lists
            await _advance(mock_clock, INTERVAL - EARLY)
            assert engine.lists == lists, "polled before the interval was up"
            await _advance(mock_clock, EARLY)
            assert engine.lists == lists + 1, f"not polled at interval {down} of the engine being down"

        engine.up = True
        await _advance(mock_clock, INTERVAL)
        assert engine.loaded == loaded  # no call, no backoff: the first pass that reaches it repairs everything
        nursery.cancel_scope.cancel()
    await engine.aclose()
