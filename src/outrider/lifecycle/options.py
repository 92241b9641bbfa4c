"""The engine lifecycle's options: what an operator sets for it (flags, variables) and what the supervisor reads.

One group of `Settings` (its `engines` field), as downloads are another: the lifecycle is off while no command is
allowed (`Settings.lifecycle` is then None), and tests build it directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from outrider.lifecycle.config import (
    DEFAULT_ANSWER_WITHIN,
    DEFAULT_PORTS,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_GRACE,
    LaunchCommand,
)
from outrider.option_types import DirPath, Launch, OnExit, Ports, Seconds, Switch, option


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True))  # code names fields; cli.py reads the variables
class LifecycleSettings:
    """The engine lifecycle's configuration."""

    commands: Launch = option(
        (), "what engines may be launched with: vllm=COMMAND;sglang=COMMAND (default: off)", "--engine-launch"
    )
    ports: Ports = option(DEFAULT_PORTS, "ports launched engines may listen on (inclusive)", "--engine-ports")
    host: str = option("0.0.0.0", "address launched engines listen on", "--engine-host")
    # Per pod, never a shared volume: the records hold pids, which are per host.
    state_dir: DirPath = option(
        Path("/tmp/outrider-engines"), "launched engines' records and output (per pod)", "--engine-state-dir"
    )
    stop_grace: Seconds = option(
        DEFAULT_STOP_GRACE, "seconds a stopping engine gets before SIGKILL", "--engine-stop-grace"
    )
    ready_timeout: Seconds = option(
        DEFAULT_READY_TIMEOUT, "seconds a launched engine may take to answer /health", "--engine-ready-timeout"
    )
    # Start vLLM with VLLM_SERVER_DEV_MODE=1: its /sleep, /wake_up and /is_sleeping routes exist only then. They
    # come with vLLM's other development routes (/collective_rpc among them) on the engine's port, unauthenticated,
    # so this is the operator's choice, off by default; sleep and wake answer 409 without it.
    dev_routes: Switch = option(
        False, "launch vLLM with its development routes (needed by sleep and wake)", "--engine-dev-routes"
    )
    # Stop them (no engine outlives its supervisor), or keep them running for the next outrider to adopt.
    on_exit: OnExit = option("stop", "stop, or keep engines running for the next outrider", "--engine-on-exit")
    answer_within: float = DEFAULT_ANSWER_WITHIN
    shm_dir: Path = Path("/dev/shm")  # where kvcached keeps its per-engine segments
    # The environment engines start from (outrider's own, without its settings and credentials: see
    # arguments.engine_environment); cli.py takes it from the process, tests give their own.
    environment: tuple[tuple[str, str], ...] = Field(default=(), repr=False)

    def command(self, engine: str) -> LaunchCommand | None:
        return next((c for c in self.commands if c.engine == engine), None)

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(c.engine for c in self.commands)
