"""The commands the operator allows the engine lifecycle to launch, and the defaults of its other options.

A request can only pick one of the operator's commands by its engine (`vllm`, `sglang`) and fill in the arguments
`arguments.py` allows; the program, its fixed arguments, the environment, the port range and the directories are
the operator's (options.py). `parse_launch` and `parse_port_range` read the operator's spelling of them.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil

ENGINE_KINDS = ("vllm", "sglang")
# AIBrix's runtime picks engine ports from 20000-21000; the same default keeps its manifests' port notes true.
DEFAULT_PORTS = (20000, 20999)
# A stop gives the engine this long after SIGTERM before the whole process group is killed: vLLM releases its
# engine-core and workers within a few seconds; a GPU engine flushing state may need more.
DEFAULT_STOP_GRACE = 15.0
# vLLM loading a large model (weights from local disk, CUDA graphs) takes minutes; the deploy/ manifests give the
# engine container 15 min to start, and an engine launched here gets the same.
DEFAULT_READY_TIMEOUT = 900.0
# AIBrix's controller gives an activate call 60 s. An activation still starting after this is answered as AIBrix
# answers a launch (success, the engine not ready yet) and goes on; the controller then waits for `ready` in the
# model list, and asking again joins the same activation.
DEFAULT_ANSWER_WITHIN = 50.0
# Flags outrider sets itself on every launch: an operator's command that also set them would be overridden.
RESERVED_FLAGS = ("--model", "--model-path", "--served-model-name", "--host", "--port", "--api-key")


@dataclasses.dataclass(frozen=True)
class LaunchCommand:
    """One command the operator allows: the engine it speaks for and its argv up to the arguments outrider adds."""

    engine: str
    argv: tuple[str, ...]  # argv[0] is an absolute path to an executable


def parse_launch(raw: str) -> tuple[LaunchCommand, ...]:
    """`vllm=/opt/venv/bin/vllm serve; sglang=/usr/bin/python3 -m sglang.launch_server` -> the commands.

    Each command is split like a shell would (quotes allowed, nothing expanded); its program is found on PATH when
    not given as a path, and must be an executable file. Raises ValueError with a message for the operator."""
    commands: list[LaunchCommand] = []
    for part in raw.split(";"):
        if not part.strip():
            continue
        engine, sep, command = part.partition("=")
        engine = engine.strip().lower()
        if not sep or engine not in ENGINE_KINDS:
            raise ValueError(f"expected ENGINE=COMMAND with ENGINE one of {', '.join(ENGINE_KINDS)}, got {part!r}")
        if any(c.engine == engine for c in commands):
            raise ValueError(f"{engine} is given twice")
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ValueError(f"{engine}: cannot split the command: {exc}") from None
        if not argv:
            raise ValueError(f"{engine}: the command is empty")
        program = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
        if program is None or not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise ValueError(f"{engine}: {argv[0]!r} is not an executable file")
        for arg in argv[1:]:
            if arg.split("=", 1)[0] in RESERVED_FLAGS:
                raise ValueError(f"{engine}: the command must not set {arg.split('=', 1)[0]} (outrider sets it)")
        commands.append(LaunchCommand(engine, (os.path.abspath(program), *argv[1:])))
    if not commands:
        raise ValueError("no command given")
    return tuple(commands)


def parse_port_range(raw: str) -> tuple[int, int]:
    """`20000-20999` -> (20000, 20999). Raises ValueError."""
    low, sep, high = raw.strip().partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected a port range like 20000-20999, got {raw!r}")
    first, last = int(low), int(high)
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"expected 1024 <= first <= last <= 65535, got {raw!r}")
    return first, last
