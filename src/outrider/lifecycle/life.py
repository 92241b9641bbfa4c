"""An engine's life: the one task that owns its transitions, from the activation to its stop.

    activation (new engines)  downloading -> launching -> booting -> active       (launch.py: the launch)
    adopted start             booting -> active                                    (an adopted engine not ready yet)
    serving                   active/sleeping/booting -> failed when it exits by itself
    stop                      * -> stopping -> gone, shielded, under stops.deadline

Whatever ends the serving part (a deactivation, an activation that failed, the shutdown) leads to the stop, which
runs shielded: a caller that disconnects, a second deactivation or the shutdown itself cannot interrupt it half-way,
and every one of them waits on `engine.done`. Only with on_exit="keep" at shutdown does the life end without it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import trio

from outrider.errors import Conflict, EngineFailed, EngineUnavailable, OutriderError
from outrider.lifecycle import artifacts, kvcache, launch, process, stops
from outrider.lifecycle.engine import Engine, Shared
from outrider.lifecycle.phases import Phase
from outrider.transfer.jobs import JobManager

log = logging.getLogger("outrider.lifecycle")


@dataclasses.dataclass(frozen=True)
class Start:
    """What a new engine's activation needs beyond its record."""

    downloads: JobManager
    model_root: str
    source: str  # as asked (it may carry credentials in its URL); the record holds it as displayed
    config: Mapping[str, str] | None
    api_key: str | None


async def life(sh: Shared, engine: Engine, start: Start | None, *, adopted_booting: bool = False) -> None:
    """Run the engine's life to its end (see the module docstring). Never raises but Cancelled."""
    try:
        if start is not None:
            await _activation(sh, engine, start)
        elif adopted_booting:
            await _adopted_start(sh, engine)
        if not engine.stop_wanted.is_set():
            await _serving(sh, engine)
    except Exception as exc:  # a bug: reported, and the engine still stopped below
        log.error("the supervision of engine %s failed", engine.name, exc_info=exc)
    finally:
        with trio.CancelScope(shield=True):
            try:
                if not engine.detach:
                    await _stop(sh, engine)
            except Exception as exc:
                log.error("the stop of engine %s failed", engine.name, exc_info=exc)
            finally:
                engine.settled.set()
                engine.done.set()


async def _activation(sh: Shared, engine: Engine, start: Start) -> None:
    """Fetch, launch, wait for /health. A failure is recorded on `engine` for its callers and leads to the stop."""
    started = trio.current_time()
    record = engine.record
    result = "failed"
    try:
        with engine.start_scope:  # the launch inside is shielded: a stop asked meanwhile finds its process
            path = await artifacts.model_directory(
                start.downloads, start.model_root, record.model_name, start.source, dict(start.config or {}) or None
            )
            record.model_path = str(path)
            await sh.step("artifact.ready", engine)
            await launch.launch(sh, engine, start.api_key)
            await launch.until_healthy(sh, engine)
            await sh.advance(engine, Phase.ACTIVE)
            result = "success"
            if sh.metrics is not None:
                sh.metrics.activation_duration.observe(trio.current_time() - started)
            log.info(
                "engine %s is serving %s on port %d (%.1fs)", record.model_name, record.artifact_url,
                record.port, trio.current_time() - started, extra={"model": record.model_name},
            )  # fmt: skip
        if engine.start_scope.cancelled_caught:
            result = "cancelled"
            engine.error = Conflict(f"model {record.model_name!r} was deactivated before it served")
    except trio.Cancelled:
        result = "cancelled"
        engine.error = EngineUnavailable("outrider is shutting down")
        raise
    except OutriderError as exc:
        _abandon(engine, exc)
    except Exception as exc:
        log.error("activation of %s failed unexpectedly", record.model_name, exc_info=exc)
        _abandon(engine, OutriderError("internal error during the activation; see the outrider log"))
    finally:
        if sh.metrics is not None:
            sh.metrics.activations.labels(result).inc()
        if engine.error is None:
            engine.settled.set()
        # else its callers hear of the failure once the stop has undone everything (life's `finally`)
        sh.changed()


def _abandon(engine: Engine, exc: OutriderError) -> None:
    """An activation failed: its life stops what it started and forgets the engine (a new activation starts over)."""
    log.warning("activation of %s failed: %s", engine.name, exc.message, extra={"model": engine.name})
    engine.error = exc
    engine.keep_output = True
    engine.request_stop()


async def _adopted_start(sh: Shared, engine: Engine) -> None:
    """An adopted engine that had not answered /health yet: wait for it as an activation would."""
    try:
        with engine.start_scope:
            await launch.until_healthy(sh, engine)
            await sh.advance(engine, Phase.ACTIVE)
    except OutriderError as exc:
        engine.error = exc
        if engine.phase is Phase.BOOTING:
            await sh.advance(engine, Phase.FAILED, exc.message)
            await stops.stop_processes(sh, engine)
    finally:
        engine.settled.set()
        sh.changed()


async def _serving(sh: Shared, engine: Engine) -> None:
    """Until a stop is wanted: report an exit of the engine by itself (phase failed, its workers stopped)."""
    async with trio.open_nursery() as nursery:

        async def on_exit() -> None:
            await engine.exited.wait()
            if engine.phase not in (Phase.BOOTING, Phase.ACTIVE, Phase.SLEEPING):
                return
            how = process.describe_exit(engine.exit_code)
            record = engine.record
            record.exit_code = engine.exit_code
            log.warning("engine %s (pid %s) %s", engine.name, record.pid, how, extra={"model": engine.name})
            if sh.metrics is not None:
                sh.metrics.exits.inc()
            await sh.advance(engine, Phase.FAILED, f"the engine {how}")
            await stops.stop_processes(sh, engine)  # its workers must not outlive it

        nursery.start_soon(on_exit)
        await engine.stop_wanted.wait()
        nursery.cancel_scope.cancel()


async def _stop(sh: Shared, engine: Engine) -> None:
    """Stop the engine and forget it, under stops.deadline; past it the record stays `stopping` for the next
    outrider and the waiters get the error."""
    engine.request_stop()
    if engine.phase is not Phase.STOPPING:
        await sh.advance(engine, Phase.STOPPING, engine.record.last_error)
    await sh.step("stop.begun", engine)
    gone = False
    with trio.move_on_after(stops.deadline(sh.settings)):
        gone = await stops.stop_processes(sh, engine)
    if not gone:
        engine.stop_error = EngineFailed(
            f"the engine for {engine.name!r} was still running {stops.deadline(sh.settings):g}s after its stop began; "
            "its record is kept (phase stopping) so that the stop is finished later"
        )
        log.error("%s", engine.stop_error.message, extra={"model": engine.name})
        return
    await sh.step("stop.stopped", engine)
    await forget(sh, engine)
    log.info("engine %s stopped", engine.name, extra={"model": engine.name})


async def forget(sh: Shared, engine: Engine) -> None:
    """The engine is gone: its record, its segment and its output (kept as failed.log after a failed activation)."""
    engine.exit_scope.cancel()
    engine.output_scope.cancel()  # the follower logs the engine's last lines as it goes
    if engine.watching:
        await engine.output_done.wait()  # before its file is moved away
    record = engine.record
    await trio.to_thread.run_sync(
        kvcache.remove, sh.settings.shm_dir, record.ipc_name, kvcache.claim_of(record.ipc_claim)
    )
    try:
        await trio.to_thread.run_sync(lambda: sh.store.remove(record.model_name, keep_output=engine.keep_output))
    except OSError as exc:
        log.error("cannot remove the record of engine %s: %s", record.model_name, exc)
    record.transition(Phase.GONE)
    if sh.engines.get(record.model_name) is engine:
        del sh.engines[record.model_name]
    sh.changed()
