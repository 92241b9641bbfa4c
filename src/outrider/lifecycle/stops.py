"""Stopping an engine: what is left of its process group, found by the process outrider started, by the recorded
pid and start time, or by the launch id its processes carry; bounded by a deadline.

A stop sends SIGTERM to the group, gives it the stop grace, then SIGKILL, and waits process.KILL_WAIT more for the
group to empty: `deadline(settings)` bounds it, and outrider's shutdown waits for every stop (they run at once)
under that same bound plus SHUTDOWN_MARGIN. A group still there at the deadline is reported and its record kept
(`stopping`), so the next outrider finishes the stop.
"""

from __future__ import annotations

import logging

import trio

from outrider.lifecycle import process
from outrider.lifecycle.engine import Engine, Shared
from outrider.lifecycle.options import LifecycleSettings

log = logging.getLogger("outrider.lifecycle")

# Beyond the stops' own bound, what shutdown allows for writing the records and logging the last lines.
SHUTDOWN_MARGIN = 2.0


def deadline(settings: LifecycleSettings) -> float:
    """Seconds one stop (and the shutdown, which runs every stop at once) may take at most."""
    return settings.stop_grace + process.KILL_WAIT


async def _groups(engine: Engine) -> list[int]:
    """The process groups of what is left of the engine that outrider may signal."""
    record = engine.record
    if engine.process is not None:
        return [engine.process.pid]  # outrider's child: its pid is its group while unreaped
    ident = record.identity
    if ident is not None:
        # An adopted engine: its group is signalled only while it is recognisably the engine's (see
        # process.group_is_ours), never a group that a reused pid now leads.
        ours = await trio.to_thread.run_sync(process.group_is_ours, ident)
        members: list[int] = await trio.to_thread.run_sync(process.group_members, ident.pid) if ours else []
        if members:
            return [ident.pid]
    if record.launch_id is None:
        return []
    # No pid recorded (an outrider died during the launch), or the leader is gone: the launch id finds the rest.
    members = await trio.to_thread.run_sync(process.carrying, record.launch_id)
    groups = {await trio.to_thread.run_sync(process.group_of, pid) for pid in members}
    return sorted(g for g in groups if g is not None and g > 1)


async def stop_processes(sh: Shared, engine: Engine) -> bool:
    """Stop what is left of the engine; True once nothing is left (or nothing ever ran)."""
    ok = True
    for pgid in await _groups(engine):
        await sh.step("stop.signalling", engine)
        ok = await process.stop_group(pgid, sh.settings.stop_grace) and ok
    if engine.process is not None and ok:
        engine.exit_code = await engine.process.wait()  # reaped: its group is gone
    return ok
