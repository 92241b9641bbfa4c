"""File-system probes of a request's path run on threads of their own: a hung mount starves only other probes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.transfer.paths import confine_off_loop


async def test_probes_stuck_on_a_hung_mount_leave_every_other_blocking_call_its_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = tmp_path / "hung-mount"
    mount_back = threading.Event()
    real_realpath = os.path.realpath

    def realpath(path: object, *args: object, **kwargs: object) -> str:
        # A network volume that stopped answering: a stat under it blocks until the mount comes back.
        if str(hung) in str(path):
            mount_back.wait(30)
        return real_realpath(path, *args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(os.path, "realpath", realpath)
    callers = int(trio.to_thread.current_default_thread_limiter().total_tokens) + 8
    try:
        async with trio.open_nursery() as probes:
            for i in range(callers):  # requests naming a path on the hung volume, more than trio's default threads
                probes.start_soon(confine_off_loop, hung, f"model-{i}", "dest")
            await trio.testing.wait_all_tasks_blocked()
            probes.cancel_scope.cancel()  # their clients gave up: the probes are abandoned, still stuck
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(lambda: "another blocking call") == "another blocking call"
    finally:
        mount_back.set()
