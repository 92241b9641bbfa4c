"""Launching an engine so that no instant exists in which it runs without a durable way to find it again.

The order (each step a hook point, see engine.StepHook):
  1. `launch.recorded`: a fresh, unguessable launch id is written to the record (phase `launching`, no pid).
  2. `launch.spawned`: the process is started in a session of its own; it and every process it forks carry the
     id in their environment (process.LAUNCH_ID_VAR).
  3. `launch.identified`: its pid and kernel start time are read.
  4. `launch.saved`: the record names the pid (phase `booting`).
Steps 2 to 4 run shielded: a deactivation asked meanwhile waits for them and then stops a process it knows. An
outrider that dies between 1 and 4 leaves a record whose launch id finds the engine (adoption.py).
"""

from __future__ import annotations

import logging
import secrets

import trio

from outrider.errors import EngineFailed
from outrider.lifecycle import arguments, process
from outrider.lifecycle.engine import Engine, Shared
from outrider.lifecycle.output import OutputFollower
from outrider.lifecycle.phases import Phase
from outrider.logs import request_id

log = logging.getLogger("outrider.lifecycle")

# How often a starting engine's /health is asked: vLLM takes tens of seconds to start, so two tries a second cost
# nothing and answer a caller within half a second of the engine being ready.
HEALTH_POLL = 0.5


async def launch(sh: Shared, engine: Engine, api_key: str | None) -> None:
    """Start the engine's process (steps above). Raises EngineFailed when it cannot be started."""
    record = engine.record
    command = sh.settings.command(record.engine)
    assert command is not None and record.model_path is not None and record.flags is not None
    argv = arguments.command_line(
        command,
        model_path=record.model_path,
        model_name=record.model_name,
        host=sh.settings.host,
        port=record.port,
        api_key=api_key,
        flags=record.flags,
    )
    record.launch_id = secrets.token_hex(16)
    env = arguments.environment(
        dict(sh.settings.environment),
        engine=record.engine,
        ipc_name=record.ipc_name,
        api_key=api_key,
        dev_routes=sh.settings.dev_routes,
    )
    env[process.LAUNCH_ID_VAR] = record.launch_id
    await sh.advance(engine, Phase.LAUNCHING)
    await sh.step("launch.recorded", engine)
    shown = " ".join("***" if api_key and a == api_key else a for a in argv)
    log.info("launching %s for %s: %s", record.engine, record.model_name, shown, extra={"model": record.model_name})
    with trio.CancelScope(shield=True):
        try:
            engine.process = await process.spawn(argv, env, sh.store.output_path(record.model_name), sh.store.directory)
        except OSError as exc:
            raise EngineFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        await sh.step("launch.spawned", engine)
        ident = await trio.to_thread.run_sync(process.identity, engine.process.pid)
        await sh.step("launch.identified", engine)
        record.pid = engine.process.pid
        if ident is not None:
            record.set_identity(ident)
        await sh.advance(engine, Phase.BOOTING)
        await sh.step("launch.saved", engine)
    watch(sh, engine, offset=0)


def watch(sh: Shared, engine: Engine, offset: int) -> None:
    """Start the engine's exit watcher and output follower (once)."""
    assert sh.nursery is not None
    if engine.watching:
        return
    engine.watching = True
    follower = OutputFollower(sh.store.output_path(engine.name), engine.name, offset)

    async def follow() -> None:
        request_id.set(None)  # the engine's lines belong to no request, not to the one that started it
        try:
            with engine.output_scope:
                await follower.run()
        finally:
            engine.output_done.set()

    async def exits() -> None:
        with engine.exit_scope:  # cancelled when the engine is forgotten
            if engine.process is not None:
                engine.exit_code = await engine.process.wait()
            elif engine.record.identity is not None:
                await process.wait_exit(engine.record.identity)
            engine.exited.set()

    sh.nursery.start_soon(follow)
    sh.nursery.start_soon(exits)


async def until_healthy(sh: Shared, engine: Engine) -> None:
    """Return once the engine answers /health; EngineFailed when it exits first or takes too long."""
    record = engine.record
    with trio.move_on_after(sh.settings.ready_timeout):
        while True:
            if await sh.api.healthy(record.port):
                return
            with trio.move_on_after(HEALTH_POLL):
                await engine.exited.wait()
            if engine.exited.is_set():
                raise EngineFailed(
                    f"the engine for {record.model_name!r} {process.describe_exit(engine.exit_code)} before it "
                    f"answered /health; its output is in outrider's log (model={record.model_name}) and in "
                    f"{sh.store.failed_output_path(record.model_name)}"
                )
    raise EngineFailed(
        f"the engine for {record.model_name!r} did not answer /health within {sh.settings.ready_timeout:g}s; "
        "it was stopped"
    )
