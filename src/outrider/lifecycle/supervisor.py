"""The engine supervisor: activates, lists, relays to and stops the engine processes outrider launches.

`Supervisor.run` is a long-lived loop in the service's root nursery. Each engine has one life (life.py) in the
supervisor's nursery that owns its transitions (phases.py): an activation or a stop goes on when the request that
asked for it disconnects, and a second caller joins the one in progress. The modules, one job each:

  phases     the state machine          engine     an engine's live state, the one way a phase changes
  life       an engine's life           launch     the launch, recorded before it happens (launch id)
  stops      stops with a deadline      adoption   engines found again from their records at start
  controls   sleep, wake, KV limit      kvcache    kvcached segments outrider creates for its engines
  ports      the engine ports           artifacts  the model directory an engine is handed
  records    the records on disk        process    process groups, identities, launch ids

At shutdown every engine is stopped at once, waited for (a stop already in flight included) under one deadline,
stops.deadline + stops.SHUTDOWN_MARGIN; with on_exit="keep" they are left running for the next outrider.

Error handling: every request raises an OutriderError subclass saying what went wrong for the caller (400 bad
input, 404 unknown model, 409 conflicting state or unsupported, 5xx engine or store failures); the loop never
raises but Cancelled. An activation that fails leaves nothing behind (no process, no record), so asking again
starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping

import trio

from outrider.adapters.names import display_source
from outrider.errors import Conflict, InvalidRequest, NotFound, OutriderError
from outrider.lifecycle import adoption, arguments, controls, kvcache, life, ports, process, stops
from outrider.lifecycle.api import Activity, EngineApi
from outrider.lifecycle.artifacts import naming_the_artifact
from outrider.lifecycle.controls import OperationResult
from outrider.lifecycle.engine import Engine, Shared, StepHook, no_hook
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.phases import LIVE, Phase
from outrider.lifecycle.records import EngineRecord, RecordStore
from outrider.metrics.own import EngineMetrics
from outrider.sources.options import credentials_config
from outrider.sources.uri import parse_source
from outrider.transfer.jobs import JobManager

__all__ = ["Activation", "EngineState", "Observation", "OperationResult", "Supervisor"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Activation:
    """What an activate request asks for (already shaped by the HTTP layer, not yet checked against the settings)."""

    model_name: str
    artifact_url: str
    engine: str = "vllm"
    port: int = 0
    ipc_name: str = ""
    credentials: Mapping[str, str] | None = None
    engine_args: Mapping[str, str] = dataclasses.field(default_factory=dict)
    legacy_args: Mapping[str, str] = dataclasses.field(default_factory=dict)
    claim_ref: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Observation:
    """An engine as seen now: its record, whether its process lives, whether it answers /health, its requests and
    its kvcached segment ((total, used, preallocated) bytes, None without one)."""

    record: EngineRecord
    alive: bool
    ready: bool
    activity: Activity
    kv: tuple[int, int, int] | None


@dataclasses.dataclass(frozen=True)
class EngineState:
    """One engine as other parts of outrider may read it (a copy: reading it changes nothing)."""

    model_name: str
    phase: Phase
    port: int
    ipc_name: str
    claim_ref: Mapping[str, str] | None
    last_error: str | None


class Supervisor:
    """Owns every engine process outrider launched (see the module docstring)."""

    def __init__(
        self,
        settings: LifecycleSettings,
        downloads: JobManager,
        *,
        model_root: str,
        api_key: str | None = None,
        metrics: EngineMetrics | None = None,
        on_change: Callable[[EngineRecord | None], None] | None = None,
        step: StepHook = no_hook,
    ) -> None:
        self.settings = settings
        self.downloads = downloads
        self.model_root = model_root
        self.store = RecordStore(settings.state_dir)
        self.api = EngineApi(settings.host, api_key)
        self._api_key = api_key
        self._metrics = metrics
        self._on_change = on_change
        self._followed: tuple[str, int] | None = None
        self._admit = trio.Lock()  # one new engine admitted at a time: its port, segment and record
        self._sh = Shared(settings, self.store, self.api, metrics, self._changed, step)
        self._running = False

    # -- the loop --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Adopt (or stop) the engines the records name, then hold the engines' nursery until cancelled; then stop
        them (or leave them, on_exit="keep") under the shutdown deadline.

        The engines' lives run shielded from the cancellation of this task: a stop must not be cut half-way. A
        guard task outside the shield turns the cancellation into the shutdown."""
        await trio.to_thread.run_sync(self.store.prepare)
        records = await trio.to_thread.run_sync(self.store.load_all)
        closing = trio.Event()

        async def guard() -> None:
            try:
                await trio.sleep_forever()
            finally:
                closing.set()

        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(guard)
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as lives:
                        self._sh.nursery = lives
                        for record in records:
                            await adoption.adopt(self._sh, Engine(record))
                        self._changed()
                        self._running = True
                        task_status.started()
                        await closing.wait()
                        self._running = False
                        await self._shutdown()
                        lives.cancel_scope.cancel()  # the followers and watchers of engines left running
                outer.cancel_scope.cancel()
        finally:
            self._sh.nursery = None
            with trio.CancelScope(shield=True):
                await self.api.aclose()

    async def _shutdown(self) -> None:
        engines = list(self._sh.engines.values())
        if self.settings.on_exit == "keep":
            log.info("leaving %d engine(s) running for the next outrider", len(engines))
            for engine in engines:
                if not engine.stop_wanted.is_set():
                    engine.detach = True
                    engine.request_stop()
        else:
            for engine in engines:
                engine.request_stop()
        bound = stops.deadline(self.settings) + stops.SHUTDOWN_MARGIN
        with trio.move_on_after(bound):
            for engine in engines:
                await engine.done.wait()
            return
        left = [e.name for e in engines if not e.done.is_set()]
        log.error("shutdown: %s not stopped within %gs; their records are kept", ", ".join(left), bound)

    def on_step(self, hook: StepHook) -> None:
        """Run `hook` at each step of the launch and stop paths (engine.StepHook): the tests' way to put a
        deactivation, a shutdown or a crash at one exact step."""
        self._sh.step = hook

    # -- queries (read-only: copies) -------------------------------------------------------------------------

    @property
    def adoptions(self) -> Mapping[str, int]:
        """How adopting each record found at start ended (AIBrix's result names), for aibrix:modelclaim_*."""
        return self._sh.adoptions

    def records(self) -> list[EngineRecord]:
        return [dataclasses.replace(e.record) for e in self._sh.engines.values()]

    def states(self) -> list[EngineState]:
        """Every engine's state, for other parts of outrider (metrics, compatibility routes) to read."""
        return [
            EngineState(
                r.model_name, r.phase, r.port, r.ipc_name, dict(r.claim_ref) if r.claim_ref else None, r.last_error
            )
            for r in (e.record for e in self._sh.engines.values())
        ]

    def get(self, model_name: str) -> EngineRecord:
        return dataclasses.replace(self._require(model_name).record)

    async def observe(self) -> list[Observation]:
        """Every engine with its liveness, readiness (/health), requests and KV figures, probed concurrently."""
        engines = list(self._sh.engines.values())
        found: list[Observation | None] = [None] * len(engines)

        async def probe(i: int, engine: Engine) -> None:
            record = dataclasses.replace(engine.record)
            alive = await self._alive(engine)
            serving = alive and record.phase is Phase.ACTIVE
            ready = serving and await self.api.healthy(record.port)
            activity = await self.api.activity(record.port, record.model_name) if serving else Activity()
            kv = await trio.to_thread.run_sync(
                kvcache.read_segment, self.settings.shm_dir, record.ipc_name, kvcache.claim_of(record.ipc_claim)
            )
            found[i] = Observation(record, alive, ready, activity, kv)

        async with trio.open_nursery() as nursery:
            for i, engine in enumerate(engines):
                nursery.start_soon(probe, i, engine)
        return [o for o in found if o is not None]

    async def _alive(self, engine: Engine) -> bool:
        record = engine.record
        if record.phase is Phase.FAILED:
            return False
        if record.phase in (Phase.DOWNLOADING, Phase.LAUNCHING):
            return True  # on its way, and nothing has failed (AIBrix counts a launch in progress alive)
        ident = record.identity
        if engine.exited.is_set() or ident is None:
            return False
        return await trio.to_thread.run_sync(process.is_running, ident)

    def _require(self, model_name: str) -> Engine:
        engine = self._sh.engines.get(model_name)
        if engine is None:
            raise NotFound(f"model {model_name!r} is not active", field="model_name")
        return engine

    # -- activate --------------------------------------------------------------------------------------------

    async def activate(self, request: Activation) -> tuple[EngineRecord, bool]:
        """Activate (or join the activation of) a model; returns its record once the engine answers /health, or
        once `answer_within` has passed (second value False: still starting). Raises the activation's error."""
        command = self.settings.command(request.engine)
        if command is None:
            allowed = ", ".join(self.settings.engines)
            raise InvalidRequest(
                f"engine {request.engine!r} may not be launched here (--engine-launch allows: {allowed})",
                field="engine",
            )
        flags = arguments.engine_flags(request.engine, request.engine_args, "engine_config.args.")
        flags += arguments.engine_flags(
            request.engine, arguments.legacy_flags(request.legacy_args), "additional_config.engine-arg:"
        )
        config = credentials_config(("credentials", request.credentials))
        with naming_the_artifact():
            parse_source(request.artifact_url)  # a malformed source is refused before anything is recorded
        artifact = display_source(request.artifact_url.strip())
        engine = self._sh.engines.get(request.model_name)
        if engine is None:
            async with self._admit:
                engine = self._sh.engines.get(request.model_name)
                if engine is None:
                    engine = await self._begin(request, artifact, config, flags)
        _check_same(engine, request, artifact, flags)
        with trio.move_on_after(self.settings.answer_within):
            await engine.settled.wait()
        if engine.error is not None:
            raise engine.error.clone()
        return dataclasses.replace(engine.record), engine.settled.is_set()

    async def _begin(
        self, request: Activation, artifact: str, config: dict[str, str] | None, flags: list[str]
    ) -> Engine:
        """Admit a new engine: its port, its kvcached segment and its record, then its life. Under `_admit`."""
        sh = self._sh
        if sh.nursery is None or not self._running:
            raise OutriderError("the engine supervisor is not running")
        port = await ports.pick(self.settings.host, self.settings.ports, request.port, self._port_taken)
        ipc_name = self._ipc_name(request)
        try:
            claim = await trio.to_thread.run_sync(kvcache.create, self.settings.shm_dir, ipc_name)
        except kvcache.SegmentTaken:
            raise Conflict(
                f"a file {ipc_name!r} exists already in {self.settings.shm_dir}, not created by outrider for this "
                "engine: give another ipc_name (or remove the file)",
                field="ipc_name",
            ) from None
        record = EngineRecord(
            model_name=request.model_name,
            engine=request.engine,
            artifact_url=artifact,
            port=port,
            ipc_name=ipc_name,
            claim_ref=dict(request.claim_ref) if request.claim_ref else None,
            flags=flags,
            ipc_claim=list(claim) if claim is not None else None,
        )
        engine = Engine(record)
        try:
            await trio.to_thread.run_sync(self.store.prepare)
            await trio.to_thread.run_sync(self.store.save, record)
        except OSError as exc:
            await trio.to_thread.run_sync(kvcache.remove, self.settings.shm_dir, ipc_name, claim)
            raise OutriderError(f"cannot write the engine record under {self.settings.state_dir}: {exc}") from None
        if not self._running:  # the shutdown began while the record was written
            await trio.to_thread.run_sync(self.store.remove, record.model_name)
            await trio.to_thread.run_sync(kvcache.remove, self.settings.shm_dir, ipc_name, claim)
            raise OutriderError("the engine supervisor is shutting down")
        sh.engines[record.model_name] = engine
        self._count_phases()
        start = life.Start(self.downloads, self.model_root, request.artifact_url, config, self._api_key)
        sh.nursery.start_soon(life.life, sh, engine, start)
        return engine

    def _ipc_name(self, request: Activation) -> str:
        """The request's segment name (AIBrix's controller sends kvc_<claim name>), or kvc_<model name>; spelled as
        kvcached spells it. No two engines share one: a name another engine holds is a 409, except a derived one,
        which is made unique by a hash of the model name (`a.b` and `a-b` are both spelled `kvc_a-b`)."""
        held = {e.record.ipc_name: e.name for e in self._sh.engines.values()}
        if request.ipc_name:
            name = arguments.sanitize_ipc_name(request.ipc_name)
            if name in held:
                raise Conflict(f"ipc_name {name!r} is the kvcached segment of model {held[name]!r}", field="ipc_name")
            return name
        name = arguments.sanitize_ipc_name(f"kvc_{request.model_name}")
        if name in held:
            digest = hashlib.sha256(request.model_name.encode()).hexdigest()[:8]
            name = f"{name}-{digest}"
        return name

    def _port_taken(self, port: int) -> bool:
        return any(e.record.port == port for e in self._sh.engines.values())

    # -- deactivate ------------------------------------------------------------------------------------------

    async def deactivate(self, model_name: str) -> bool:
        """Stop a model's engine and forget it; False when there was nothing to stop. The stop is its life's: a
        caller that goes away does not leave an engine half-stopped, and a second caller waits for the same one.
        Raises EngineFailed when the engine was still running at the stop's deadline."""
        engine = self._sh.engines.get(model_name)
        if engine is None:
            return False
        engine.request_stop()
        await engine.done.wait()
        if engine.stop_error is not None:
            raise engine.stop_error.clone()
        return True

    # -- sleep, wake, KV limit -------------------------------------------------------------------------------

    async def sleep(self, model_name: str, level: int, operation_id: str) -> OperationResult:
        return await controls.sleep(self._sh, self._require(model_name), level, operation_id)

    async def wake(self, model_name: str, operation_id: str) -> OperationResult:
        return await controls.wake(self._sh, self._require(model_name), operation_id)

    async def kv_limit(self, model_name: str, limit_bytes: int, operation_id: str) -> OperationResult:
        return await controls.kv_limit(self._sh, self._require(model_name), limit_bytes, operation_id)

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def _count_phases(self) -> None:
        if self._metrics is not None:
            counts: dict[str, int] = {}
            for e in self._sh.engines.values():
                # A launch in progress is counted booting, as AIBrix's controller is shown it.
                phase = Phase.BOOTING if e.record.phase is Phase.LAUNCHING else e.record.phase
                counts[phase] = counts.get(phase, 0) + 1
            self._metrics.set_phases(counts)

    def _changed(self) -> None:
        """Tell the service which engine to follow (see outrider.target): the newest one on its way or serving."""
        self._count_phases()
        live = [e.record for e in self._sh.engines.values() if e.record.phase in LIVE]
        newest = max(live, key=lambda r: r.created_at, default=None)
        key = None if newest is None else (newest.model_name, newest.port)
        if key != self._followed:
            self._followed = key
            if self._on_change is not None:
                self._on_change(None if newest is None else dataclasses.replace(newest))


def _check_same(engine: Engine, request: Activation, artifact: str, flags: list[str]) -> None:
    """A second activation of a model joins the first only if it asks for the same engine. AIBrix 0.8's runtime
    answers success and changes nothing; outrider cannot change a running engine's flags, segment or owner without
    restarting it, so a different ask is a 409 naming the field (deactivate, then activate anew)."""
    record = engine.record
    name = record.model_name
    if record.phase is Phase.STOPPING:
        raise Conflict(f"model {name!r} is being deactivated; activate it again once it is gone", field="model_name")
    if record.phase is Phase.FAILED:
        raise Conflict(
            f"model {name!r} failed ({record.last_error}); deactivate it before activating it again",
            field="model_name",
        )
    first = f"model {name!r} is already active with"
    if record.engine != request.engine:
        raise Conflict(f"{first} engine {record.engine}; deactivate it first", field="engine")
    if record.artifact_url != artifact:
        raise Conflict(f"{first} {record.artifact_url}; deactivate it first", field="artifact_url")
    if request.port not in (0, record.port):
        raise Conflict(f"{first} port {record.port}", field="port")
    if record.flags is not None and record.flags != flags:
        shown = " ".join(record.flags) or "no engine flags"
        field = "engine_config.args" if request.engine_args or not request.legacy_args else "additional_config"
        raise Conflict(f"{first} {shown}; deactivate it to change its flags", field=field)
    if request.ipc_name and arguments.sanitize_ipc_name(request.ipc_name) != record.ipc_name:
        raise Conflict(f"{first} kvcached segment {record.ipc_name!r}", field="ipc_name")
    if request.claim_ref and dict(request.claim_ref) != (record.claim_ref or {}):
        raise Conflict(f"{first} another claim_ref ({record.claim_ref})", field="claim_ref")
