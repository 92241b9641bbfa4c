"""Sleep, wake and KV limit of a running engine: idempotent by operation id, under the engine's lock.

Sleep and wake are the only transitions not made by the engine's life (`active <-> sleeping`); each checks after
its await that the life has not moved the engine on meanwhile (a stop, an exit), and refuses (409) if it has.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

from outrider.errors import Conflict, EngineRefused, EngineUnavailable, Unsupported
from outrider.lifecycle import kvcache
from outrider.lifecycle.engine import Engine, Shared, still
from outrider.lifecycle.phases import Phase

log = logging.getLogger("outrider.lifecycle")


@dataclasses.dataclass(frozen=True)
class OperationResult:
    model_name: str
    operation_id: str
    applied: bool
    phase: Phase


def _check_sleep_routes(sh: Shared, engine: Engine, action: str) -> None:
    record = engine.record
    if record.engine != "vllm":
        raise Unsupported(f"{action} is not supported for engine {record.engine!r} (vLLM only)", field="model_name")
    if not sh.settings.dev_routes:
        raise Unsupported(
            f"{action} needs vLLM's development routes (/sleep, /wake_up), which outrider enables only when "
            "started with --engine-dev-routes",
            field="model_name",
        )


async def sleep(sh: Shared, engine: Engine, level: int, operation_id: str) -> OperationResult:
    async def apply() -> bool:
        _check_sleep_routes(sh, engine, "sleep")
        if engine.phase is Phase.SLEEPING:
            return False
        if engine.phase is not Phase.ACTIVE:
            raise Conflict(f"model {engine.name!r} is {engine.phase}; only an active engine can sleep")
        await sh.api.sleep(engine.record.port, level)
        if not await sh.api.is_sleeping(engine.record.port):
            raise EngineRefused("the engine accepted the sleep but says it is not sleeping", status=502, reason="")
        still(engine, Phase.ACTIVE, "sleep")
        await sh.advance(engine, Phase.SLEEPING)
        log.info("engine %s sleeps (level %d)", engine.name, level, extra={"model": engine.name})
        return True

    return await _once(sh, engine, "sleep", operation_id, apply)


async def wake(sh: Shared, engine: Engine, operation_id: str) -> OperationResult:
    async def apply() -> bool:
        _check_sleep_routes(sh, engine, "wake")
        if engine.phase is not Phase.SLEEPING:
            return False
        await sh.api.wake(engine.record.port)
        if await sh.api.is_sleeping(engine.record.port):
            raise EngineRefused("the engine accepted the wake but says it is still sleeping", status=502, reason="")
        still(engine, Phase.SLEEPING, "wake")
        await sh.advance(engine, Phase.ACTIVE)
        log.info("engine %s is awake", engine.name, extra={"model": engine.name})
        return True

    return await _once(sh, engine, "wake", operation_id, apply)


async def kv_limit(sh: Shared, engine: Engine, limit_bytes: int, operation_id: str) -> OperationResult:
    async def apply() -> bool:
        record = engine.record
        try:
            written = await trio.to_thread.run_sync(
                kvcache.write_limit,
                sh.settings.shm_dir,
                record.ipc_name,
                kvcache.claim_of(record.ipc_claim),
                limit_bytes,
            )
        except TimeoutError as exc:
            raise EngineUnavailable(str(exc)) from None
        if not written:
            raise Unsupported(
                f"model {engine.name!r} has no kvcached segment {record.ipc_name!r} set up in {sh.settings.shm_dir}: "
                "its engine does not run kvcached, so its KV cache cannot be limited",
                field="model_name",
            )
        log.info("engine %s KV limit set to %d bytes", engine.name, limit_bytes, extra={"model": engine.name})
        return True

    return await _once(sh, engine, "kv-limit", operation_id, apply)


async def _once(
    sh: Shared, engine: Engine, action: str, operation_id: str, apply: Callable[[], Awaitable[bool]]
) -> OperationResult:
    """Run `apply` under the engine's lock, once per operation id: a controller retrying a call whose answer it
    lost gets the first result back with `applied` false, and nothing is done twice. `apply` answers whether it
    changed anything; what it raises is remembered by nothing, so a retry retries."""
    async with engine.lock:
        record = engine.record
        done = record.completed(action, operation_id)
        if done is not None:
            return OperationResult(engine.name, operation_id, False, Phase(done))
        applied = await apply()
        record.remember(action, operation_id, record.phase)
        await sh.save(record)
        sh.changed()
        return OperationResult(engine.name, operation_id, applied, record.phase)
