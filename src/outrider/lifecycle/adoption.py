"""Taking engines over from an earlier outrider, from their records: keep, stop, or report each one.

failed                       listed as failed (it exited before), until deactivated
downloading                  nothing was launched: the record is dropped
launching, no pid            the earlier outrider died during the launch: the launch id finds the engine's
                             processes; their session leader is adopted (booting), leftovers are stopped
pid recorded, not running    failed ("stopped while outrider was not running"); a stopping one is finished
running                      adopted; or stopped when it may no longer run (its command left --engine-launch,
                             its port left the range) or was being stopped
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import trio

from outrider.lifecycle import launch, life, process, stops
from outrider.lifecycle.engine import Engine, Shared
from outrider.lifecycle.phases import Phase

log = logging.getLogger("outrider.lifecycle")


async def adopt(sh: Shared, record_engine: Engine) -> None:
    """Take one engine over (see the module docstring); its life, if it has one, starts in `sh.nursery`."""
    engine = record_engine
    record = engine.record
    name = record.model_name
    assert sh.nursery is not None
    start_life = functools.partial(sh.nursery.start_soon, life.life, sh, engine, None)
    if record.phase is Phase.FAILED:
        engine.settled.set()
        engine.exited.set()
        sh.engines[name] = engine
        sh.adoptions["terminal"] += 1
        start_life()
        return
    if record.pid is None and record.phase is Phase.LAUNCHING and record.launch_id is not None:
        leader = await _leader(record.launch_id)
        if leader is not None:
            record.set_identity(leader)
            record.pid = leader.pid
            record.transition(Phase.BOOTING)
            await sh.save(record)
            log.info("found engine %s (pid %d) by its launch id: its launch was not recorded", name, leader.pid)
    if record.pid is None:
        # Nothing was launched (downloading), or the launch died before its leader ran: leftovers that carry the
        # launch id, if any, are stopped before the record goes.
        log.info("dropping the record of %s: its activation never launched an engine that still runs", name)
        record.transition(Phase.STOPPING)
        with trio.move_on_after(stops.deadline(sh.settings)):
            await stops.stop_processes(sh, engine)
        await life.forget(sh, engine)
        sh.adoptions["removed"] += 1
        return
    ident = record.identity
    running = ident is not None and await trio.to_thread.run_sync(process.is_running, ident)
    sh.engines[name] = engine
    if not running:
        engine.settled.set()
        engine.exited.set()
        if record.phase is Phase.STOPPING:
            engine.request_stop()
            sh.adoptions["stopping"] += 1
        else:
            how = process.describe_exit(None)
            record.transition(Phase.FAILED, f"the engine {how} while outrider was not running")
            log.warning("engine %s stopped while outrider was not running", name, extra={"model": name})
            await sh.save(record)
            sh.nursery.start_soon(stops.stop_processes, sh, engine)  # any workers it left behind
            sh.adoptions["terminal"] += 1
        start_life()
        return
    low, high = sh.settings.ports
    refusal = None
    if sh.settings.command(record.engine) is None:
        refusal = f"{record.engine} is no longer in --engine-launch"
    elif not low <= record.port <= high:
        refusal = f"its port {record.port} is outside the engine port range {low}-{high}"
    launch.watch(sh, engine, offset=await _size(sh.store.output_path(name)))
    if refusal is not None or record.phase is Phase.STOPPING:
        log.warning("stopping engine %s (pid %d): %s", name, record.pid, refusal or "it was being stopped")
        engine.settled.set()
        engine.request_stop()
        sh.adoptions["invalid" if refusal is not None else "stopping"] += 1
        start_life()
        return
    log.info("adopting engine %s (pid %d, %s, port %d)", name, record.pid, record.phase, record.port)
    sh.adoptions["success"] += 1
    booting = record.phase is Phase.BOOTING
    if not booting:
        engine.settled.set()
    sh.nursery.start_soon(functools.partial(life.life, sh, engine, None, adopted_booting=booting))


async def _leader(launch_id: str) -> process.Identity | None:
    """The session leader among the processes carrying the launch id (the process outrider spawned)."""
    for pid in await trio.to_thread.run_sync(process.carrying, launch_id):
        if await trio.to_thread.run_sync(process.group_of, pid) == pid:
            return await trio.to_thread.run_sync(process.identity, pid)
    return None


async def _size(path: Path) -> int:
    def size() -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    return await trio.to_thread.run_sync(size)
