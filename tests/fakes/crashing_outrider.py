"""An outrider that activates one model and dies by SIGKILL at one step of the launch (`engine.StepHook`), as a
node's OOM killer or `kill -9` would end it: no `finally`, no shutdown, nothing written after that instant.

Run as `python -m tests.fakes.crashing_outrider TMP STEP LOW HIGH` from the repository root: TMP is the test's
directory (its state, model root and shm directory, as lifecycle_fixtures lays them out), LOW-HIGH the port range.
STEP `none` crashes at no step: the test kills it from outside, timed from the `activating` line it prints.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import trio

from outrider.lifecycle.engine import Engine
from outrider.lifecycle.supervisor import Activation
from outrider.service import serve
from tests.integration.lifecycle_fixtures import lifecycle_settings, outrider_settings


async def main(tmp: Path, step: str, ports: tuple[int, int]) -> None:
    lifecycle = lifecycle_settings(tmp, ports=ports)
    settings = outrider_settings(tmp, "http://127.0.0.1:9")  # no configured engine: only the launched one

    async def crash(at: str, engine: Engine) -> None:
        if at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    async with trio.open_nursery() as nursery:
        runtime, _ = await nursery.start(functools.partial(serve, settings, trio.Event(), lifecycle=lifecycle))
        assert runtime.engines is not None
        runtime.engines.on_step(crash)
        print("activating", flush=True)
        await runtime.engines.activate(Activation("tiny", str(tmp / "models" / "tiny")))
        print("the activation ended without reaching the step", step, flush=True)
        os._exit(3)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], (int(sys.argv[3]), int(sys.argv[4])))
