"""One writer per destination directory, across processes, pods and nodes.

Many outrider processes share one model cache (pods on one node on a hostPath, replicas on a ReadWriteMany
volume). Every download into a destination first takes `<dest>/.outrider-download.lock`; only the holder creates,
writes, truncates, renames or removes part files, manifests and the record under it. The others wait (polling, so
that a wait never blocks the event loop and a cancel ends it at once), then plan again against the record: the
holder's published files are theirs too, and a dead holder's manifests are resumed, not restarted.

Two mechanisms, because shared volumes differ:
- A kernel lock (`flock`) on the lock file. The kernel releases it when its holder dies, kill -9 included. Local
  file systems enforce it between all processes of the node; NFSv4 and CephFS enforce it between nodes (the
  client forwards it to the server). On those (`TRUSTED_FILESYSTEMS`) taking the kernel lock is enough.
- A lease: the holder writes who it is (host, pid namespace, pid and its start time, a random token) into the lock
  file and renews it every LEASE_RENEW seconds. On a file system whose kernel locks may be local to one client
  (NFSv3 mounted with `nolock` or `local_lock`, FUSE, SMB, anything unknown), a process that got the kernel lock
  still waits while another holder's lease is alive: its pid still runs (same host and pid namespace, where that
  can be checked), or it renewed within LEASE_TTL seconds (elsewhere). A dead holder's lease is taken over after at
  most LEASE_TTL, as Kthena's downloader does (a 5 s renewal, taken over after 15 s).
  Where `flock` is refused outright, the lease alone decides: written, then read back after LEASE_SETTLE seconds,
  and the last writer wins.
A holder that finds another token in its lease when it renews (it was stopped past LEASE_TTL and someone took
over) has lost the destination: its download stops at once and fails, touching nothing more.

The lock file is removed only with the download it guards (`remove_if_free`, holding it), and a process that got
the kernel lock checks that the file under the name is still the one it locked: one that locked a removed file
lets it go and locks the new one, so a removal never lets two writers in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from outrider.errors import OutriderError

log = logging.getLogger(__name__)

LOCK_NAME = ".outrider-download.lock"
# How often a waiter tries the lock again: the wait after a holder finishes, against one syscall per try.
POLL_INTERVAL = 0.2
# The lease: renewed this often, and taken over when not renewed for this long (Kthena's downloader: 5 s and 15 s).
LEASE_RENEW = 5.0
LEASE_TTL = 15.0
# Lease-only mode (no kernel locks at all): how long a written lease must survive before it counts as taken.
LEASE_SETTLE = 1.0
# File systems on which `flock` excludes every process that can open the file (mountinfo's type names).
TRUSTED_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "nfs4", "ceph", "gpfs", "lustre"}
)
# flock refused by the file system itself (not "held by someone else").
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockLost(OutriderError):
    """Another process took over the destination (this one was stalled past the lease): nothing more is written."""

    status = 409
    type = "conflict"


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a destination, as its lease says."""

    token: str
    host: str
    pid: int
    boot: str | None = None
    pidns: str | None = None
    started: int | None = None  # the process's start time in clock ticks since boot (/proc/<pid>/stat)
    renewed: float = 0.0  # wall clock: compared across nodes, as Kthena's lease is
    released: bool = False

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Holder | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                token=str(data["token"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                boot=data.get("boot"),
                pidns=data.get("pidns"),
                started=data.get("started"),
                renewed=float(data.get("renewed", 0.0)),
                released=data.get("released") is True,
            )
        except (KeyError, TypeError, ValueError):
            return None


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    return None


def _pid_namespace() -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return None


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), which tells a live pid from a reused one; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def this_process(token: str) -> Holder:
    pid = os.getpid()
    return Holder(token, socket.gethostname(), pid, _boot_id(), _pid_namespace(), process_start(pid), time.time())


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding `path` (from /proc/self/mountinfo: the deepest mount point above it)."""
    try:
        target = os.path.realpath(path)
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, right.split()[0] if right.split() else None
    return kind


def holder_alive(holder: Holder, me: Holder, ttl: float, now: float) -> bool:
    """Does `holder`'s lease still hold? A process we can see is asked directly; any other by its renewals."""
    if holder.released or holder.token == me.token:
        return False
    if holder.boot is not None and holder.boot == me.boot and holder.pidns is not None and holder.pidns == me.pidns:
        return process_start(holder.pid) == holder.started
    return now - holder.renewed < ttl


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def remove_if_free(dest: Path) -> bool:
    """Blocking: remove `dest`'s lock file if no process holds it (its download was removed, and nobody is writing
    there). Holding the kernel lock while unlinking: a waiter that then gets it notices the file is gone."""
    path = dest / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held (or no kernel locks here): left in place, so is the directory
        try:
            holder = Holder.from_json(json.loads(os.pread(fd, 4096, 0) or b"null"))
        except ValueError:
            holder = None  # torn or foreign content: the kernel lock we hold decides
        if holder is not None and holder_alive(holder, this_process(""), LEASE_TTL, time.time()):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


class DestinationLock:
    """The lock of one destination directory. `acquire`, then `keep` while writing, then `release`.

    Every file operation runs in a thread of the lock's own limiter, abandoned on cancel: a hung network mount
    stalls this destination's lock only, never another download's or the event loop."""

    def __init__(self, dest: Path, *, ttl: float = LEASE_TTL, renew: float = LEASE_RENEW) -> None:
        self.path = dest / LOCK_NAME
        self.ttl = ttl
        self.renew = renew
        self.me = this_process(secrets.token_hex(16))
        self.trusted = False  # kernel locks exclude everyone on this file system
        self.kernel = True  # flock works here at all
        self.lost = False
        self._fd: int | None = None
        self._held = False
        self._limiter = trio.CapacityLimiter(1)

    async def _thread(self, fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._limiter)

    async def acquire(self, on_wait: Callable[[str | None], None] | None = None) -> None:
        """Wait until this process holds the destination. `on_wait(who)` is told whom it waits for at each change,
        and `on_wait(None)` once the wait is over; a cancel ends the wait, holding nothing."""
        try:
            await self._take(on_wait)
            while not self.kernel:  # lease-only: ours once it survived LEASE_SETTLE (a rival's write replaces it)
                await trio.sleep(LEASE_SETTLE)
                if await self._thread(self._still_ours):
                    break
                self._held = False
                await self._take(on_wait)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.release()
            raise

    async def _take(self, on_wait: Callable[[str | None], None] | None) -> None:
        waited_for: object = ...
        while (blocker := await self._thread(self._try)) is not False:
            if blocker != waited_for:
                waited_for = blocker
                who = blocker.describe() if isinstance(blocker, Holder) else "another process"
                log.info("%s is being written by %s; waiting", self.path.parent, who)
                if on_wait is not None:
                    on_wait(who)
            await trio.sleep(POLL_INTERVAL)
        if on_wait is not None and waited_for is not ...:
            on_wait(None)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.trusted = filesystem_type(self.path) in TRUSTED_FILESYSTEMS
        return self._fd

    def _try(self) -> Holder | bool | None:
        """Thread: take the destination if free. False when taken; else whom we wait for (None: unknown)."""
        fd = self._open()
        if self.kernel:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read()
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                log.warning("%s: the file system refuses locks (%s); relying on the lease", self.path, exc.strerror)
                self.kernel = False
            else:
                if not _same_file(fd, self.path):  # removed (with its download) while we waited: lock the new one
                    self._fd = None
                    os.close(fd)
                    return None
        holder = self._read()
        by_lease = not (self.trusted and self.kernel)  # the kernel lock alone does not settle it
        if by_lease and holder is not None and holder_alive(holder, self.me, self.ttl, time.time()):
            if self.kernel:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return holder
        if holder is not None and not holder.released and holder.token != self.me.token:
            log.warning("%s: taking over from %s, which stopped holding it", self.path.parent, holder.describe())
        self._write()
        self._held = True
        return False

    def _read(self) -> Holder | None:
        assert self._fd is not None
        try:
            raw = os.pread(self._fd, 4096, 0)
            return Holder.from_json(json.loads(raw)) if raw.strip() else None
        except (OSError, ValueError):
            return None  # torn or foreign content: judged by the kernel lock alone

    def _write(self, *, released: bool = False) -> None:
        assert self._fd is not None
        me = dataclasses.replace(self.me, renewed=time.time(), released=released)
        payload = json.dumps(me.to_json()).encode()
        # Written in place, never renamed over: the kernel lock belongs to this inode.
        os.pwrite(self._fd, payload, 0)
        os.ftruncate(self._fd, len(payload))

    def _still_ours(self) -> bool:
        holder = self._read()
        return holder is not None and holder.token == self.me.token and not holder.released

    def _renew(self) -> bool:
        """Thread: renew the lease; False when another process holds it now."""
        if not self._still_ours():
            return False
        self._write()
        return True

    async def keep(self, scope: trio.CancelScope) -> None:
        """Renew the lease until cancelled; when another process took it over, mark it lost and cancel `scope`
        (the writing). Never raises but Cancelled: a failed renewal is retried, and the lease's TTL is the limit."""
        while True:
            await trio.sleep(self.renew)
            try:
                ours = await self._thread(self._renew)
            except OSError as exc:
                log.warning("%s: renewing the lease failed: %s", self.path, exc.strerror or exc)
                continue
            if not ours:
                log.error("%s: another process took over this destination; stopping this download", self.path.parent)
                self.lost = True
                scope.cancel()
                return

    async def release(self) -> None:
        """Give the destination up (says so in the lease, so lease-only waiters need not wait for the TTL)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        held, self._held = self._held, False

        def give_up() -> None:
            try:
                if held and not self.lost:
                    self._fd = fd
                    self._write(released=True)
            finally:
                self._fd = None
                os.close(fd)  # closing the last descriptor drops the kernel lock

        await self._thread(give_up)
