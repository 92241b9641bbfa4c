"""One engine's live state beside its record, what the lifecycle's modules share, and the one way a phase changes.

Each engine has one owner of its transitions: its life (life.py), a task in the supervisor's nursery that runs the
activation, watches the engine, and stops it. Others only ask: a deactivation or the shutdown sets `stop_wanted`
(and cancels `start_scope`, the cancellable part of an activation: the download and the wait for /health, never
the launch itself); sleep and wake change `active <-> sleeping` under the engine's lock through `advance`, which
refuses (409) once the life has moved the engine on.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

from outrider.errors import Conflict, OutriderError
from outrider.lifecycle.api import EngineApi
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.phases import Phase
from outrider.lifecycle.records import EngineRecord, RecordStore
from outrider.metrics.own import EngineMetrics

log = logging.getLogger("outrider.lifecycle")

# A step of the launch or stop path ("launch.spawned", "stop.signalled", ...) and the engine it is at: the tests'
# hook into every await of those paths (a deterministic interleaving, or a crash at that very step).
StepHook = Callable[[str, "Engine"], Awaitable[None]]


async def no_hook(step: str, engine: Engine) -> None:
    return None


@dataclasses.dataclass(eq=False)
class Engine:
    """One engine's live state (its record is the durable half)."""

    record: EngineRecord
    process: trio.Process | None = None  # outrider's child; None for an adopted engine
    # Set when the activation (or, for an adopted engine, the wait for its /health) has ended either way.
    settled: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: OutriderError | None = None
    exited: trio.Event = dataclasses.field(default_factory=trio.Event)
    exit_code: int | None = None
    stop_wanted: trio.Event = dataclasses.field(default_factory=trio.Event)
    # At shutdown with on_exit="keep": the life ends and leaves the engine running for the next outrider.
    detach: bool = False
    # The life has ended: the engine is stopped and forgotten (or detached, or left `stopping` past its deadline).
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    stop_error: OutriderError | None = None
    start_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    output_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    exit_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    watching: bool = False
    output_done: trio.Event = dataclasses.field(default_factory=trio.Event)
    keep_output: bool = False  # a failed activation keeps its output as failed.log
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)

    @property
    def name(self) -> str:
        return self.record.model_name

    @property
    def phase(self) -> Phase:
        return self.record.phase

    def request_stop(self) -> None:
        """Ask the life to stop the engine (idempotent): what it is doing that may be cancelled is cancelled."""
        self.stop_wanted.set()
        self.start_scope.cancel()


@dataclasses.dataclass(eq=False)
class Shared:
    """What the lifecycle's modules share: the settings, the records, the engine API, the live engines."""

    settings: LifecycleSettings
    store: RecordStore
    api: EngineApi
    metrics: EngineMetrics | None
    changed: Callable[[], None]
    step: StepHook = no_hook
    engines: dict[str, Engine] = dataclasses.field(default_factory=dict)
    nursery: trio.Nursery | None = None
    # How adopting each record found at start ended, in AIBrix's result names (metrics/modelclaim.py).
    adoptions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    async def save(self, record: EngineRecord) -> None:
        """Write the record; shielded, since a record half-way through a change must still reach the disk."""
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self.store.save, record)
            except OSError as exc:
                log.error("cannot write the record of engine %s: %s", record.model_name, exc)

    async def advance(self, engine: Engine, phase: Phase, error: str | None = None) -> None:
        """The engine's transition to `phase` (IllegalTransition if the state machine has none), recorded and told."""
        engine.record.transition(phase, error)
        await self.save(engine.record)
        self.changed()


def still(engine: Engine, expected: Phase, action: str) -> None:
    """A control that awaited the engine: refuse (409) if its life moved it on meanwhile (a stop, an exit)."""
    if engine.phase is not expected:
        raise Conflict(f"model {engine.name!r} became {engine.phase} during the {action}", field="model_name")
