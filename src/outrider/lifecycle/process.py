"""Engine processes: started in a session (process group) of their own, known again by pid and start time, stopped
as a group.

An engine is several processes (vLLM's API server forks an engine core and workers), so everything here works on
the process group the launch created: signals go to the group, and a stop ends only when no member is left, so no
worker outlives its server. A pid alone says little after a restart (pids are reused), so an engine is known by its
`Identity`: pid, the kernel's start time of that pid, and the boot it belongs to. Linux only (/proc, pidfd).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

log = logging.getLogger(__name__)

# How often a stop looks at the process group while waiting for it to empty: the kernel gives no event for "the
# last member of a group exited", and a tenth of a second is nothing beside an engine's own shutdown.
GROUP_POLL = 0.1
# How long a group may take to disappear after SIGKILL (the kernel tears down large address spaces in a second or
# two, a GPU driver releasing device memory a few more); a group still there after this is reported rather than
# waited on forever. With the stop grace it bounds a stop, and so outrider's shutdown (see stops.py).
KILL_WAIT = 10.0
# The variable every process of an engine carries (inherited by its workers): the record's launch id, by which a
# restarted outrider finds an engine whose pid it never recorded.
LAUNCH_ID_VAR = "OUTRIDER_LAUNCH_ID"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclasses.dataclass(frozen=True)
class Identity:
    """A process as the kernel knows it: pid, start time (clock ticks after boot) and boot id. A pid that is alive
    with another start time, or after another boot, is some other process."""

    pid: int
    start_ticks: int
    boot_id: str


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses), or None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> Identity | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    # Field 22 of /proc/PID/stat is starttime; after the pid and command, it is the 20th.
    return Identity(pid, int(fields[19]), boot_id())


def is_running(ident: Identity) -> bool:
    """Whether this very process is still running (not exited, not a zombie, not a reused pid)."""
    fields = _stat_fields(ident.pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == ident.start_ticks and boot_id() == ident.boot_id


def group_is_ours(ident: Identity) -> bool:
    """Whether the process group led by `ident` can still only hold that engine's processes. The kernel hands out no
    pid that is in use as a process group id, so while no other process has the leader's pid, any member of the
    group is a leftover of the engine (a worker whose server exited). Another process under that pid (same pid,
    another start time or boot) means the pid was free again, reused, and the group is someone else's."""
    fields = _stat_fields(ident.pid)
    if fields is None or len(fields) < 20:
        return True
    return int(fields[19]) == ident.start_ticks and boot_id() == ident.boot_id


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields: state, ppid, pgrp, ...
        if fields is not None and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def carrying(launch_id: str) -> list[int]:
    """Live processes whose environment holds LAUNCH_ID_VAR=launch_id (only outrider's user's are readable, which
    are the only ones outrider launches). Blocking: it reads /proc."""
    wanted = f"{LAUNCH_ID_VAR}={launch_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def group_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields is not None and len(fields) > 2 else None


async def spawn(argv: Sequence[str], env: Mapping[str, str], output: Path, cwd: Path) -> trio.Process:
    """Start `argv` in a new session (its pid is its process group id), stdout and stderr appended to `output`.

    Its output goes to a file rather than a pipe so that the engine outlives outrider cleanly (a pipe with no reader
    left would fail the engine's next write) and a restarted outrider can follow it again (lifecycle/output.py).
    Raises OSError when the program cannot be started."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,
        )
    finally:
        os.close(fd)


async def wait_exit(ident: Identity) -> None:
    """Return once a process that is not outrider's child (an adopted engine) has exited. Its exit status is not
    ours to read: its parent, now init, reaps it."""
    try:
        pidfd = os.pidfd_open(ident.pid)
    except ProcessLookupError:
        return
    try:
        if not is_running(ident):  # the pid may already name another process: the one we knew is gone
            return
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


async def _wait_group_empty(pgid: int) -> None:
    # No event tells when a group's last member exits (see GROUP_POLL), so the group is looked at again and again.
    while await trio.to_thread.run_sync(group_members, pgid):  # noqa: ASYNC110
        await trio.sleep(GROUP_POLL)


async def stop_group(pgid: int, grace: float) -> bool:
    """SIGTERM the group, give it `grace` seconds, then SIGKILL what is left; return once no member is left (True),
    or after KILL_WAIT more seconds with members still there (False: reported, not waited on forever).

    Only ever called with the pgid of a group outrider started and still recognises (see `is_running`)."""
    signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await _wait_group_empty(pgid)
        return True
    log.warning("engine process group %d outlived its %gs grace; killing it", pgid, grace)
    signal_group(pgid, signal.SIGKILL)
    with trio.move_on_after(KILL_WAIT):
        await _wait_group_empty(pgid)
        return True
    log.error("engine process group %d is still there %gs after SIGKILL", pgid, KILL_WAIT)
    return False


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (its exit code is unknown: it was started by an earlier outrider)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
