"""The destination lock (transfer/lock.py): one writer per destination, waiting without blocking, dead holders taken
over, a lost lease noticed. Separate DestinationLock objects stand for separate processes: flock excludes open file
descriptions, so two in one process exclude each other as two processes do (the multi-process tests show that)."""

from __future__ import annotations

import errno
import fcntl
import json
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.transfer import lock
from outrider.transfer.lock import LOCK_NAME, DestinationLock, Holder

WITHIN = 10.0  # seconds any expected hand-over may take; reached only when the lock is broken


class Waiter:
    """`target.acquire()` in the background: what it was told it waits for, and when it got the lock."""

    def __init__(self, nursery: trio.Nursery, target: DestinationLock) -> None:
        self.acquired, self.waiting, self.told = trio.Event(), trio.Event(), list[str | None]()
        nursery.start_soon(self._go, target)

    def _told(self, who: str | None) -> None:
        self.told.append(who)
        self.waiting.set()

    async def _go(self, target: DestinationLock) -> None:
        await target.acquire(self._told)
        self.acquired.set()

    async def wait_told(self) -> None:
        with trio.fail_after(WITHIN):
            await self.waiting.wait()


async def test_a_second_writer_waits_for_the_first_then_takes_over(tmp_path: Path) -> None:
    first, second = DestinationLock(tmp_path / "m"), DestinationLock(tmp_path / "m")
    await first.acquire()
    async with trio.open_nursery() as nursery:
        waiter = Waiter(nursery, second)
        await waiter.wait_told()
        assert waiter.told[0] is not None and "pid" in waiter.told[0]  # it says whom it waits for
        assert not waiter.acquired.is_set()
        await first.release()
        with trio.fail_after(WITHIN):
            await waiter.acquired.wait()
    assert waiter.told[-1] is None  # the wait is over
    holder = Holder.from_json(json.loads((tmp_path / "m" / LOCK_NAME).read_text()))
    assert holder is not None and holder.token == second.me.token
    await second.release()


async def test_a_cancelled_wait_holds_nothing(tmp_path: Path) -> None:
    first, second = DestinationLock(tmp_path / "m"), DestinationLock(tmp_path / "m")
    await first.acquire()
    with trio.move_on_after(0.5) as scope:
        await second.acquire()
    assert scope.cancelled_caught
    await first.release()
    third = DestinationLock(tmp_path / "m")
    with trio.fail_after(WITHIN):
        await third.acquire()  # the cancelled waiter left no lock behind
    await third.release()


def lease(path: Path, holder: Holder) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / LOCK_NAME).write_text(json.dumps(holder.to_json()))


@pytest.fixture
def untrusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a file system whose kernel locks may be local to one client (NFSv3, FUSE): the lease decides."""
    monkeypatch.setattr(lock, "TRUSTED_FILESYSTEMS", frozenset())


async def test_on_an_untrusted_file_system_a_live_local_holder_is_waited_for_and_a_dead_one_taken_over(
    tmp_path: Path, untrusted: None
) -> None:
    me = lock.this_process("x")
    sleeper = await trio.lowlevel.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = Holder("other", me.host, sleeper.pid, me.boot, me.pidns, lock.process_start(sleeper.pid), 0.0)
        lease(tmp_path / "m", alive)  # renewed long ago: only its pid says it is alive
        taker = DestinationLock(tmp_path / "m")
        async with trio.open_nursery() as nursery:
            waiter = Waiter(nursery, taker)
            await waiter.wait_told()
            assert not waiter.acquired.is_set()
            sleeper.kill()
            await sleeper.wait()
            with trio.fail_after(WITHIN):  # no lease TTL to wait out: the pid is gone
                await waiter.acquired.wait()
        await taker.release()
    finally:
        sleeper.kill()
        await sleeper.wait()


async def test_a_remote_holder_is_trusted_for_the_lease_ttl_only(tmp_path: Path, untrusted: None) -> None:
    remote = Holder("other", "another-node", 1, "another-boot", "pid:[1]", 5, time.time())
    lease(tmp_path / "fresh", remote)
    with trio.move_on_after(0.5) as scope:
        await DestinationLock(tmp_path / "fresh").acquire()
    assert scope.cancelled_caught  # renewed just now: held

    stale = Holder("other", "another-node", 1, "another-boot", "pid:[1]", 5, time.time() - lock.LEASE_TTL - 1)
    lease(tmp_path / "stale", stale)
    taker = DestinationLock(tmp_path / "stale")
    with trio.fail_after(WITHIN):
        await taker.acquire()
    await taker.release()


async def test_on_a_trusted_file_system_the_kernel_lock_decides(tmp_path: Path) -> None:
    # A fresh lease of a holder that died (kill -9 leaves its lease): the kernel released its lock, so go on.
    lease(tmp_path / "m", Holder("dead", "another-node", 1, "another-boot", "pid:[1]", 5, time.time()))
    taker = DestinationLock(tmp_path / "m")
    with trio.fail_after(WITHIN):
        await taker.acquire()
    assert taker.trusted  # tmp_path is on a local file system (or tmpfs/overlay)
    await taker.release()


async def test_without_kernel_locks_the_lease_alone_excludes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    monkeypatch.setattr(lock, "LEASE_SETTLE", 0.05)
    first, second = DestinationLock(tmp_path / "m"), DestinationLock(tmp_path / "m")
    await first.acquire()
    assert not first.kernel
    async with trio.open_nursery() as nursery:
        waiter = Waiter(nursery, second)
        await waiter.wait_told()
        assert not waiter.acquired.is_set()
        await first.release()  # says so in the lease: no TTL to wait out
        with trio.fail_after(WITHIN):
            await waiter.acquired.wait()
    await second.release()


async def test_a_holder_whose_lease_was_taken_over_stops_writing(tmp_path: Path) -> None:
    holder = DestinationLock(tmp_path / "m", renew=0.05)
    await holder.acquire()
    lease(tmp_path / "m", Holder("usurper", "another-node", 1))
    with trio.fail_after(WITHIN), trio.CancelScope() as writing:
        await holder.keep(writing)
        await trio.sleep_forever()  # what keep cancels: the writing
    assert writing.cancelled_caught and holder.lost
    await holder.release()
    assert json.loads((tmp_path / "m" / LOCK_NAME).read_text())["token"] == "usurper"  # left as the taker wrote it


def test_the_file_system_type_of_a_path_is_read_from_mountinfo(tmp_path: Path) -> None:
    assert lock.filesystem_type(tmp_path) is not None
    assert lock.filesystem_type(Path("/proc/self")) == "proc"
