"""Confining a directory a request names to a root (the model root, the adapter root), before anything is written.

The one confinement rule of the project: a destination that could leave its root is refused with
`PathOutsideRoot` (403, naming the field): a `..` part (also percent-encoded), an absolute path elsewhere, or a
symlink anywhere along the existing part of the path that resolves outside the root. A NUL byte, an empty path,
the root itself (a download needs a directory of its own) or an existing file are a 400.
Resolving symlinks touches the file system, which may be a stalled network volume: `confine` blocks, so the
event loop calls `confine_off_loop`. Concurrent symlink swaps inside the root are out of scope: outrider is the
only writer under it.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import trio

from outrider.errors import InvalidRequest, InvalidSource, PathOutsideRoot


def _check_spelling(raw: str, field: str) -> None:
    """What refuses a path whatever the root: empty, a NUL byte, a `..` part (also percent-encoded)."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequest(f"{field} must be a non-empty path", field=field)
    if "\x00" in raw:
        raise InvalidRequest(f"{field} must not contain a NUL byte", field=field)
    for spelling in {raw, urllib.parse.unquote(raw)}:
        if ".." in spelling.replace("\\", "/").split("/"):
            raise PathOutsideRoot(f"{field} must not contain '..': {raw!r}", field=field)


def confine(root: str | Path, raw: str, field: str) -> Path:
    """The destination for `raw` (relative to `root`, or absolute under it) as a path under `root` as given, with
    every symlink resolved (so a container that mounts the root elsewhere can be handed the same relative path).
    Raises PathOutsideRoot or InvalidRequest, naming `field`. Blocking: see `confine_off_loop`."""
    _check_spelling(raw, field)
    real_root = Path(os.path.realpath(root))
    candidate = Path(raw) if raw.startswith("/") else Path(root) / raw
    # realpath resolves every symlink in the part that exists; what does not exist yet cannot point anywhere.
    try:
        resolved = Path(os.path.realpath(candidate))
        is_file = resolved.exists() and not resolved.is_dir()
    except OSError as exc:  # a name too long for the file system, say
        raise InvalidRequest(f"{field} is not a usable path: {exc.strerror}", field=field) from None
    if resolved == real_root:
        raise InvalidRequest(f"{field} must name a directory of its own under {str(root)!r}, not the root", field=field)
    if real_root not in resolved.parents:
        raise PathOutsideRoot(f"{field} must be a directory under {str(root)!r}: {raw!r}", field=field)
    if is_file:
        raise InvalidRequest(f"{field} names an existing file, not a directory: {raw!r}", field=field)
    return Path(root) / resolved.relative_to(real_root)


#: A directory downloads may land under, and the flag that sets it (named when a destination is refused).
Root = tuple[Path, str]


def confine_any(roots: Sequence[Root], raw: str, field: str) -> Path:
    """`confine` under the first of `roots` that holds `raw`; when none does, one PathOutsideRoot naming them all
    with their flags. Any other refusal (a NUL byte, a root itself, a file) is the first root's that holds it."""
    _check_spelling(raw, field)
    for root, _flag in roots:
        try:
            return confine(root, raw, field)
        except PathOutsideRoot:
            continue
    named = " or ".join(f"{str(root)!r} ({flag})" for root, flag in roots)
    raise PathOutsideRoot(f"{field} must be a directory under {named}: {raw!r}", field=field)


# Threads for probing the file system of a request's path (realpath, isdir): their own, not trio's default
# limiter, which every other `to_thread` call shares. An abandoned probe holds its token until the call returns,
# and on a hung network mount it never does: then only other probes wait, not every blocking call of the process.
PROBE_THREADS = 8
_PROBES: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("outrider_fs_probes")


def probe_limiter() -> trio.CapacityLimiter:
    """The limiter of this trio run's file-system probes (PROBE_THREADS)."""
    try:
        return _PROBES.get()
    except LookupError:
        limiter = trio.CapacityLimiter(PROBE_THREADS)
        _PROBES.set(limiter)
        return limiter


async def confine_any_off_loop(roots: Sequence[Root], raw: str, field: str) -> Path:
    """`confine_any` in a worker thread, as `confine_off_loop`."""
    return await trio.to_thread.run_sync(
        confine_any, roots, raw, field, abandon_on_cancel=True, limiter=probe_limiter()
    )


async def confine_off_loop(root: str | Path, raw: str, field: str) -> Path:
    """`confine` in a worker thread under `probe_limiter`. A caller cancelled meanwhile (a client gone, a
    shutdown) returns at once; the thread, stuck perhaps on a dead mount, is left to finish on its own: it only
    reads."""
    return await trio.to_thread.run_sync(confine, root, raw, field, abandon_on_cancel=True, limiter=probe_limiter())


def join_under(dest: Path, relative: str) -> Path:
    """`dest / relative` for a source's file path; refuses paths that would leave `dest` (a store's bad listing)."""
    parts = relative.split("/")
    if any(p in ("..", ".", "") for p in parts) or "\x00" in relative:
        raise InvalidSource(f"the source lists a file with an unsafe path: {relative!r}")
    return dest.joinpath(*parts)
