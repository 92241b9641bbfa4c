"""The engine supervisor: activates, watches, relays to and stops the engine processes outrider launches.

`Supervisor.run` is a long-lived loop in the service's root nursery. Every engine's work runs in its nursery, not
in the request that asked for it: an activation (fetch the artifact through the download engine, launch, wait for
`/health`) or a deactivation goes on when its caller disconnects, and a second caller joins the one in progress.
Each engine has a watcher that notices its exit (phase `failed`, with the exit code, and what is left of its process
group stopped) and a follower that copies its output into outrider's log with the model's name.

Records on disk (records.py) let a restarted outrider adopt the engines still running (pid and start time must
match) or stop those it may no longer run (their command is no longer allowed, or their port is outside the range);
an engine that exited meanwhile is listed as `failed`. At shutdown outrider stops every engine, or, with
`on_exit="keep"`, leaves them to the next outrider.

Error handling: every step raises an OutriderError subclass saying what went wrong for the caller (400 bad input,
404 unknown model, 409 conflicting state or unsupported, 5xx engine or store failures); the loop never raises but
Cancelled. An activation that fails leaves nothing behind (no process, no record), so asking again starts over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import trio

from outrider.adapters.names import display_source
from outrider.errors import (
    Conflict,
    EngineFailed,
    EngineRefused,
    EngineUnavailable,
    InvalidRequest,
    NotFound,
    OutriderError,
    SourceError,
    Unsupported,
)
from outrider.lifecycle import arguments, kvcache, process
from outrider.lifecycle.api import Activity, EngineApi
from outrider.lifecycle.options import LifecycleSettings
from outrider.lifecycle.output import OutputFollower
from outrider.lifecycle.records import EngineRecord, RecordStore
from outrider.logs import request_id
from outrider.metrics.own import EngineMetrics
from outrider.sources.options import credentials_config
from outrider.sources.uri import parse_source
from outrider.transfer.jobs import JobManager
from outrider.transfer.paths import confine_off_loop

log = logging.getLogger(__name__)

# How often a starting engine's /health is asked: vLLM takes tens of seconds to start, so two tries a second cost
# nothing and answer a caller within half a second of the engine being ready.
HEALTH_POLL = 0.5
# Phases in which an engine is on its way or serving, i.e. the engine outrider's scrape and /ready follow.
_LIVE = ("downloading", "booting", "active", "sleeping")


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
class OperationResult:
    model_name: str
    operation_id: str
    applied: bool
    phase: str


@dataclasses.dataclass(frozen=True)
class Observation:
    """An engine as seen now: its record, whether its process lives, whether it answers /health, its requests and
    its kvcached segment ((total, used, preallocated) bytes, None without one)."""

    record: EngineRecord
    alive: bool
    ready: bool
    activity: Activity
    kv: tuple[int, int, int] | None


@dataclasses.dataclass(eq=False)
class _Engine:
    """One engine's live state beside its record."""

    record: EngineRecord
    process: trio.Process | None = None
    # Set when the activation (or, for an adopted engine, the wait for its /health) has ended either way.
    settled: trio.Event = dataclasses.field(default_factory=trio.Event)
    error: OutriderError | None = None
    exited: trio.Event = dataclasses.field(default_factory=trio.Event)
    exit_code: int | None = None
    stopped: trio.Event = dataclasses.field(default_factory=trio.Event)
    start_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    output_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    watching: bool = False
    output_done: trio.Event = dataclasses.field(default_factory=trio.Event)
    stop_begun: bool = False
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)


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
        self._engines: dict[str, _Engine] = {}
        self._nursery: trio.Nursery | None = None

    # -- the loop --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Adopt (or stop) the engines the records name, then hold the engines' nursery until cancelled."""
        await trio.to_thread.run_sync(self.store.prepare)
        records = await trio.to_thread.run_sync(self.store.load_all)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for record in records:
                    await self._adopt(record)
                self._changed()
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
                    with trio.CancelScope(shield=True):
                        await self._exit()
        finally:
            with trio.CancelScope(shield=True):
                await self.api.aclose()

    async def _exit(self) -> None:
        if self.settings.on_exit == "keep":
            log.info("leaving %d engine(s) running for the next outrider", len(self._engines))
            return
        async with trio.open_nursery() as nursery:
            for engine in list(self._engines.values()):
                nursery.start_soon(self._stop, engine)

    # -- queries ---------------------------------------------------------------------------------------------

    def records(self) -> list[EngineRecord]:
        return [dataclasses.replace(e.record) for e in self._engines.values()]

    def get(self, model_name: str) -> EngineRecord:
        return self._require(model_name).record

    async def observe(self) -> list[Observation]:
        """Every engine with its liveness, readiness (/health), requests and KV figures, probed concurrently."""
        engines = list(self._engines.values())
        found: list[Observation | None] = [None] * len(engines)

        async def probe(i: int, engine: _Engine) -> None:
            record = dataclasses.replace(engine.record)
            alive = self._alive(engine)
            serving = alive and record.phase == "active"
            ready = serving and await self.api.healthy(record.port)
            activity = await self.api.activity(record.port, record.model_name) if serving else Activity()
            kv = await trio.to_thread.run_sync(kvcache.read_segment, self.settings.shm_dir, record.ipc_name)
            found[i] = Observation(record, alive, ready, activity, kv)

        async with trio.open_nursery() as nursery:
            for i, engine in enumerate(engines):
                nursery.start_soon(probe, i, engine)
        return [o for o in found if o is not None]

    def _alive(self, engine: _Engine) -> bool:
        record = engine.record
        if record.phase == "failed":
            return False
        if record.phase == "downloading":
            return True  # nothing to run yet, and nothing has failed (AIBrix counts a launch in progress alive)
        ident = record.identity
        return not engine.exited.is_set() and ident is not None and process.is_running(ident)

    def _require(self, model_name: str) -> _Engine:
        engine = self._engines.get(model_name)
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
        with _naming_the_artifact():
            parse_source(request.artifact_url)  # a malformed source is refused before anything is recorded
        artifact = display_source(request.artifact_url.strip())
        engine = self._engines.get(request.model_name)
        if engine is None:
            port = await self._pick_port(request.port)
            engine = self._engines.get(request.model_name)  # another request may have begun it meanwhile
            if engine is None:
                engine = await self._begin(request, port, artifact, config, flags)
        self._check_same(engine.record, request, artifact)
        with trio.move_on_after(self.settings.answer_within):
            await engine.settled.wait()
        if engine.error is not None:
            raise engine.error.clone()
        return dataclasses.replace(engine.record), engine.settled.is_set()

    async def _begin(
        self, request: Activation, port: int, artifact: str, config: dict[str, str] | None, flags: list[str]
    ) -> _Engine:
        """Record a new engine (its port reserved from here on) and start its activation."""
        if self._nursery is None:
            raise OutriderError("the engine supervisor is not running")
        record = EngineRecord(
            model_name=request.model_name,
            engine=request.engine,
            artifact_url=artifact,
            port=port,
            ipc_name=arguments.sanitize_ipc_name(request.ipc_name or f"kvc_{request.model_name}"),
            claim_ref=dict(request.claim_ref) if request.claim_ref else None,
        )
        engine = _Engine(record)
        self._engines[record.model_name] = engine
        try:
            await trio.to_thread.run_sync(self.store.save, record)
        except OSError as exc:
            del self._engines[record.model_name]
            raise OutriderError(f"cannot write the engine record under {self.settings.state_dir}: {exc}") from None
        self._count_phases()
        self._nursery.start_soon(self._activation, engine, request, config, flags)
        return engine

    def _check_same(self, record: EngineRecord, request: Activation, artifact: str) -> None:
        name = record.model_name
        if record.phase == "stopping":
            raise Conflict(
                f"model {name!r} is being deactivated; activate it again once it is gone", field="model_name"
            )
        if record.phase == "failed":
            raise Conflict(
                f"model {name!r} failed ({record.last_error}); deactivate it before activating it again",
                field="model_name",
            )
        if record.engine != request.engine or record.artifact_url != artifact:
            raise Conflict(
                f"model {name!r} is already active with {record.engine} serving {record.artifact_url}; "
                "deactivate it first",
                field="model_name",
            )
        if request.port not in (0, record.port):
            raise Conflict(f"model {name!r} is already active on port {record.port}", field="port")

    async def _pick_port(self, wanted: int) -> int:
        """A port of the range that no engine holds and that can be bound now. The caller reserves it (by
        recording the engine) with no await in between; the check of `taken` after each await keeps two
        concurrent activations from picking the same port."""
        low, high = self.settings.ports
        if wanted and not low <= wanted <= high:
            raise InvalidRequest(f"port {wanted} is outside the engine port range {low}-{high}", field="port")
        for port in [wanted] if wanted else range(low, high + 1):
            if self._port_taken(port):
                continue
            if await trio.to_thread.run_sync(_bindable, self.settings.host, port) and not self._port_taken(port):
                return port
        if wanted:
            raise Conflict(f"port {wanted} is in use", field="port")
        raise Conflict(f"no free port left in the engine port range {low}-{high}", field="port")

    def _port_taken(self, port: int) -> bool:
        return any(e.record.port == port for e in self._engines.values())

    async def _activation(
        self, engine: _Engine, request: Activation, config: dict[str, str] | None, flags: list[str]
    ) -> None:
        """Fetch, launch, wait for /health. Owns its failures: recorded on `engine` for the callers, and everything
        it started undone (a deactivation that cancels it undoes the rest itself)."""
        started = trio.current_time()
        record = engine.record
        result = "failed"
        try:
            with engine.start_scope:
                path = await self._artifact(request, config)
                record.model_path = str(path)
                await self._launch(engine, flags)
                await self._until_healthy(engine)
                record.transition("active")
                await self._save(record)
                result = "success"
                if self._metrics is not None:
                    self._metrics.activation_duration.observe(trio.current_time() - started)
                log.info(
                    "engine %s is serving %s on port %d (%.1fs)",
                    record.model_name,
                    record.artifact_url,
                    record.port,
                    trio.current_time() - started,
                    extra={"model": record.model_name},
                )
            if engine.start_scope.cancelled_caught:
                result = "cancelled"
                engine.error = Conflict(f"model {record.model_name!r} was deactivated before it served")
        except trio.Cancelled:
            result = "cancelled"
            engine.error = EngineUnavailable("outrider is shutting down")
            raise
        except OutriderError as exc:
            engine.error = exc
            await self._abandon(engine, exc.message)
        except Exception as exc:
            log.error("activation of %s failed unexpectedly", record.model_name, exc_info=exc)
            engine.error = OutriderError("internal error during the activation; see the outrider log")
            await self._abandon(engine, engine.error.message)
        finally:
            if self._metrics is not None:
                self._metrics.activations.labels(result).inc()
            engine.settled.set()
            self._changed()

    async def _artifact(self, request: Activation, config: dict[str, str] | None) -> Path:
        """The model directory the engine is handed: a directory already under the model root is used in place;
        anything else is fetched by the download engine into `<model root>/<model name>` (resumed, verified)."""
        source = request.artifact_url.strip()
        if source.startswith("/"):
            real = await trio.to_thread.run_sync(os.path.realpath, source)
            root = await trio.to_thread.run_sync(os.path.realpath, self.model_root)
            if real.startswith(root.rstrip("/") + "/"):
                path = await confine_off_loop(self.model_root, source, "artifact_url")
                if not await trio.to_thread.run_sync(os.path.isdir, path):
                    raise InvalidRequest(f"artifact_url {source!r} is not a directory", field="artifact_url")
                return path
        dest = await confine_off_loop(self.model_root, request.model_name, "model_name")
        log.info("fetching %s for %s into %s", display_source(source), request.model_name, dest)
        with _naming_the_artifact():
            return await self.downloads.fetch(source, config, dest)

    async def _launch(self, engine: _Engine, flags: list[str]) -> None:
        record = engine.record
        command = self.settings.command(record.engine)
        assert command is not None and record.model_path is not None
        argv = arguments.command_line(
            command,
            model_path=record.model_path,
            model_name=record.model_name,
            host=self.settings.host,
            port=record.port,
            api_key=self._api_key,
            flags=flags,
        )
        env = arguments.environment(
            dict(self.settings.environment),
            engine=record.engine,
            ipc_name=record.ipc_name,
            api_key=self._api_key,
            dev_routes=self.settings.dev_routes,
        )
        shown = " ".join("***" if self._api_key and a == self._api_key else a for a in argv)
        log.info("launching %s for %s: %s", record.engine, record.model_name, shown, extra={"model": record.model_name})
        output = self.store.output_path(record.model_name)
        try:
            engine.process = await process.spawn(argv, env, output, self.settings.state_dir)
        except OSError as exc:
            raise EngineFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        ident = await trio.to_thread.run_sync(process.identity, engine.process.pid)
        record.pid = engine.process.pid
        if ident is not None:
            record.set_identity(ident)
        record.transition("booting")
        await self._save(record)
        self._watch(engine, offset=0)

    def _watch(self, engine: _Engine, offset: int) -> None:
        """Start the engine's watcher and output follower (once)."""
        assert self._nursery is not None
        if engine.watching:
            return
        engine.watching = True
        follower = OutputFollower(self.store.output_path(engine.record.model_name), engine.record.model_name, offset)

        async def follow() -> None:
            request_id.set(None)  # the engine's lines belong to no request, not to the one that started it
            try:
                with engine.output_scope:
                    await follower.run()
            finally:
                engine.output_done.set()

        self._nursery.start_soon(follow)
        self._nursery.start_soon(self._watcher, engine)

    async def _until_healthy(self, engine: _Engine) -> None:
        record = engine.record
        with trio.move_on_after(self.settings.ready_timeout):
            while True:
                if await self.api.healthy(record.port):
                    return
                with trio.move_on_after(HEALTH_POLL):
                    await engine.exited.wait()
                if engine.exited.is_set():
                    raise EngineFailed(
                        f"the engine for {record.model_name!r} {process.describe_exit(engine.exit_code)} before it "
                        f"answered /health; its output is in outrider's log (model={record.model_name}) and in "
                        f"{self.store.failed_output_path(record.model_name)}"
                    )
        raise EngineFailed(
            f"the engine for {record.model_name!r} did not answer /health within {self.settings.ready_timeout:g}s; "
            "it was stopped"
        )

    async def _abandon(self, engine: _Engine, why: str) -> None:
        """An activation failed: stop what it started and forget the engine (a new activation starts over)."""
        record = engine.record
        log.warning("activation of %s failed: %s", record.model_name, why, extra={"model": record.model_name})
        with trio.CancelScope(shield=True):
            await self._stop_group(engine)
            await self._forget(engine, keep_output=True)

    # -- exits -----------------------------------------------------------------------------------------------

    async def _watcher(self, engine: _Engine) -> None:
        """Wait for the engine's main process to exit, then report it (unless a stop or an activation is handling
        it)."""
        record = engine.record
        if engine.process is not None:
            engine.exit_code = await engine.process.wait()
        else:
            ident = record.identity
            if ident is not None:
                await process.wait_exit(ident)
        engine.exited.set()
        await engine.settled.wait()  # an exit during start-up is the activation's to report
        if record.phase in ("stopping", "failed") or self._engines.get(record.model_name) is not engine:
            return
        record.exit_code = engine.exit_code
        record.transition("failed", f"the engine {process.describe_exit(engine.exit_code)}")
        log.warning(
            "engine %s (pid %s) %s", record.model_name, record.pid, process.describe_exit(engine.exit_code),
            extra={"model": record.model_name},
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.exits.inc()
        await self._save(record)
        self._changed()
        await self._stop_group(engine)  # its workers must not outlive it

    async def _stop_group(self, engine: _Engine) -> None:
        """Stop what is left of the engine's process group (nothing when it never started)."""
        pgid = engine.record.pid
        if pgid is None:
            return
        if engine.process is None:
            # An adopted engine (not outrider's child): its group is signalled only while it is recognisably the
            # engine's (see process.group_is_ours), never a group that a reused pid now leads.
            ident = engine.record.identity
            if ident is None or not await trio.to_thread.run_sync(process.group_is_ours, ident):
                return
            if not await trio.to_thread.run_sync(process.group_members, pgid):
                return
        await process.stop_group(pgid, self.settings.stop_grace)

    # -- deactivate ------------------------------------------------------------------------------------------

    async def deactivate(self, model_name: str) -> bool:
        """Stop a model's engine and forget it; False when there was nothing to stop. The stop runs in the
        supervisor's nursery: a caller that goes away does not leave an engine half-stopped."""
        engine = self._engines.get(model_name)
        if engine is None:
            return False
        if not engine.stop_begun:
            assert self._nursery is not None
            self._nursery.start_soon(self._stop, engine)
        await engine.stopped.wait()
        return True

    async def _stop(self, engine: _Engine) -> None:
        record = engine.record
        if engine.stop_begun:
            await engine.stopped.wait()
            return
        engine.stop_begun = True
        record.transition("stopping")
        try:
            await self._save(record)
            self._changed()
            engine.start_scope.cancel()
            await engine.settled.wait()
            await self._stop_group(engine)
            if engine.process is not None:
                engine.exit_code = await engine.process.wait()  # reaped: its group is gone
            await self._forget(engine)
            log.info("engine %s stopped", record.model_name, extra={"model": record.model_name})
        finally:
            engine.stopped.set()

    async def _forget(self, engine: _Engine, *, keep_output: bool = False) -> None:
        engine.output_scope.cancel()  # the follower logs the engine's last lines as it goes
        if engine.watching:
            await engine.output_done.wait()  # before its file is moved away
        name = engine.record.model_name
        if self._engines.get(name) is engine:
            del self._engines[name]
        await trio.to_thread.run_sync(functools.partial(self.store.remove, name, keep_output=keep_output))
        self._changed()

    # -- sleep, wake, KV limit -------------------------------------------------------------------------------

    async def sleep(self, model_name: str, level: int, operation_id: str) -> OperationResult:
        async def apply(record: EngineRecord) -> bool:
            self._check_sleep_routes(record, "sleep")
            if record.phase == "sleeping":
                return False
            if record.phase != "active":
                raise Conflict(f"model {model_name!r} is {record.phase}; only an active engine can sleep")
            await self.api.sleep(record.port, level)
            if not await self.api.is_sleeping(record.port):
                raise EngineRefused("the engine accepted the sleep but says it is not sleeping", status=502, reason="")
            record.transition("sleeping")
            log.info("engine %s sleeps (level %d)", model_name, level, extra={"model": model_name})
            return True

        return await self._once(model_name, "sleep", operation_id, apply)

    async def wake(self, model_name: str, operation_id: str) -> OperationResult:
        async def apply(record: EngineRecord) -> bool:
            self._check_sleep_routes(record, "wake")
            if record.phase != "sleeping":
                return False
            await self.api.wake(record.port)
            if await self.api.is_sleeping(record.port):
                raise EngineRefused("the engine accepted the wake but says it is still sleeping", status=502, reason="")
            record.transition("active")
            log.info("engine %s is awake", model_name, extra={"model": model_name})
            return True

        return await self._once(model_name, "wake", operation_id, apply)

    def _check_sleep_routes(self, record: EngineRecord, action: str) -> None:
        if record.engine != "vllm":
            raise Unsupported(f"{action} is not supported for engine {record.engine!r} (vLLM only)", field="model_name")
        if not self.settings.dev_routes:
            raise Unsupported(
                f"{action} needs vLLM's development routes (/sleep, /wake_up), which outrider enables only when "
                "started with --engine-dev-routes",
                field="model_name",
            )

    async def kv_limit(self, model_name: str, limit_bytes: int, operation_id: str) -> OperationResult:
        async def apply(record: EngineRecord) -> bool:
            try:
                written = await trio.to_thread.run_sync(
                    kvcache.write_limit, self.settings.shm_dir, record.ipc_name, limit_bytes
                )
            except TimeoutError as exc:
                raise EngineUnavailable(str(exc)) from None
            if not written:
                raise Unsupported(
                    f"model {model_name!r} has no kvcached segment {record.ipc_name!r} in {self.settings.shm_dir}: its "
                    "engine does not run kvcached, so its KV cache cannot be limited",
                    field="model_name",
                )
            log.info("engine %s KV limit set to %d bytes", model_name, limit_bytes, extra={"model": model_name})
            return True

        return await self._once(model_name, "kv-limit", operation_id, apply)

    async def _once(
        self, model_name: str, action: str, operation_id: str, apply: Callable[[EngineRecord], Awaitable[bool]]
    ) -> OperationResult:
        """Run `apply` on the engine's record under its lock, once per operation id: a controller retrying a call
        whose answer it lost gets the first result back with `applied` false, and nothing is done twice.
        `apply` answers whether it changed anything; what it raises is remembered by nothing, so a retry retries."""
        engine = self._require(model_name)
        async with engine.lock:
            record = engine.record
            done = record.completed(action, operation_id)
            if done is not None:
                return OperationResult(model_name, operation_id, False, done)
            applied = await apply(record)
            record.remember(action, operation_id, record.phase)
            await self._save(record)
            self._changed()
            return OperationResult(record.model_name, operation_id, applied, record.phase)

    # -- adoption --------------------------------------------------------------------------------------------

    async def _adopt(self, record: EngineRecord) -> None:
        """Take an engine over from an earlier outrider: keep it, stop it, or report it failed."""
        name = record.model_name
        engine = _Engine(record)
        ident = record.identity
        running = ident is not None and await trio.to_thread.run_sync(process.is_running, ident)
        if record.phase == "failed":
            engine.settled.set()
            self._engines[name] = engine
            return
        if record.pid is None:  # the earlier outrider stopped before it launched anything
            log.info("dropping the record of %s: its activation never launched an engine", name)
            await trio.to_thread.run_sync(self.store.remove, name)
            return
        self._engines[name] = engine
        if not running:
            engine.settled.set()
            engine.exited.set()
            if record.phase == "stopping":
                await self._stop_group(engine)
                await self._forget(engine)
                return
            record.transition("failed", f"the engine {process.describe_exit(None)} while outrider was not running")
            log.warning("engine %s stopped while outrider was not running", name, extra={"model": name})
            await self._save(record)
            assert self._nursery is not None
            self._nursery.start_soon(self._stop_group, engine)  # any workers it left behind
            return
        low, high = self.settings.ports
        refusal = None
        if self.settings.command(record.engine) is None:
            refusal = f"{record.engine} is no longer in --engine-launch"
        elif not low <= record.port <= high:
            refusal = f"its port {record.port} is outside the engine port range {low}-{high}"
        if refusal is not None or record.phase == "stopping":
            log.warning("stopping engine %s (pid %d): %s", name, record.pid, refusal or "it was being stopped")
            engine.settled.set()
            assert self._nursery is not None
            self._watch(engine, offset=await _size(self.store.output_path(name)))
            self._nursery.start_soon(self._stop, engine)
            return
        log.info("adopting engine %s (pid %d, %s, port %d)", name, record.pid, record.phase, record.port)
        assert self._nursery is not None
        self._watch(engine, offset=await _size(self.store.output_path(name)))
        if record.phase in ("booting", "downloading"):
            self._nursery.start_soon(self._adopted_start, engine)
        else:
            engine.settled.set()

    async def _adopted_start(self, engine: _Engine) -> None:
        """An adopted engine that had not answered /health yet: wait for it as an activation would."""
        record = engine.record
        try:
            with engine.start_scope:
                await self._until_healthy(engine)
                record.transition("active")
                await self._save(record)
        except OutriderError as exc:
            engine.error = exc
            record.transition("failed", exc.message)
            await self._save(record)
            with trio.CancelScope(shield=True):
                await self._stop_group(engine)
        finally:
            engine.settled.set()
            self._changed()

    # -- bookkeeping -----------------------------------------------------------------------------------------

    async def _save(self, record: EngineRecord) -> None:
        with trio.CancelScope(shield=True):  # a record half-way through a change must still reach the disk
            try:
                await trio.to_thread.run_sync(self.store.save, record)
            except OSError as exc:
                log.error("cannot write the record of engine %s: %s", record.model_name, exc)
        self._count_phases()

    def _count_phases(self) -> None:
        if self._metrics is not None:
            counts: dict[str, int] = {}
            for e in self._engines.values():
                counts[e.record.phase] = counts.get(e.record.phase, 0) + 1
            self._metrics.set_phases(counts)

    def _changed(self) -> None:
        """Tell the service which engine to follow (metrics, /ready): the newest one on its way or serving."""
        self._count_phases()
        live = [e.record for e in self._engines.values() if e.record.phase in _LIVE]
        newest = max(live, key=lambda r: r.created_at, default=None)
        key = None if newest is None else (newest.model_name, newest.port)
        if key != self._followed:
            self._followed = key
            if self._on_change is not None:
                self._on_change(newest)


@contextlib.contextmanager
def _naming_the_artifact() -> Iterator[None]:
    """Errors name the fields the activation calls them by: the download engine's `source` is `artifact_url`, its
    `dest` (`<model root>/<model name>`) is `model_name`. Renamed on a clone: the download job keeps its error,
    and other callers may be handed it."""
    try:
        yield
    except OutriderError as exc:
        if isinstance(exc, SourceError) and exc.field in (None, "source"):
            field = "artifact_url"
        elif exc.field == "dest":
            field = "model_name"
        else:
            raise
        renamed = exc.clone()
        renamed.field = field
        raise renamed from None


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the engine's server will
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _size(path: Path) -> int:
    def size() -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    return await trio.to_thread.run_sync(size)
