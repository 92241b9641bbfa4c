"""Where an adapter's files come from: the seam between the reconciler and the download engine.

The reconciler asks an `AdapterFetcher` for a local directory the engine can load, and never asks what kind of
source it was. `VolumeFetcher` answers for sources already on the shared volume (an absolute path or `pvc://path`
under the adapter root, confined: no `..`, no symlink leading out) and hands every other source to one injected
`RemoteDownload` callable (the transfer engine's download function). Without one, a remote source is an
`InvalidSource` (400) saying so. `SharedFetches` wraps any fetcher so concurrent fetches of one source into one
directory share a single download.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from outrider.adapters.names import display_source
from outrider.errors import InvalidSource, SourceAccessDenied, SourceNotFound

#: Download `source` (with its per-request options, e.g. credentials) into the directory `dest` and return the
#: directory holding the adapter. The transfer engine provides it; it must publish atomically (nothing
#: half-written under `dest`) and raise `outrider.errors.SourceError` subclasses.
RemoteDownload = Callable[[str, Mapping[str, object] | None, Path], Awaitable[Path]]


class AdapterFetcher(Protocol):
    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        """Make adapter `name` from `source` available on the shared volume; return the directory the engine
        should load (`dest` for downloads, the source directory itself when it is already on the volume).
        Raises `outrider.errors.SourceError` subclasses (InvalidSource, SourceNotFound, SourceAccessDenied, ...)."""
        ...


def is_volume_source(source: str) -> bool:
    return source.startswith("/") or source.startswith("pvc://")


def confine(root: Path, raw: str, field: str) -> Path:
    """`raw` (absolute, or relative to `root`) as a path inside `root`, judged by its words alone: no `..` part,
    not outside `root`. Symlinks are checked by `resolve_on_volume` when the path is read."""
    path = Path(raw) if raw.startswith("/") else root / raw
    if ".." in path.parts or "\x00" in raw:
        raise SourceAccessDenied(f"{field} {raw!r} must not contain '..'", field=field)
    if path != root and root not in path.parents:
        raise SourceAccessDenied(f"{field} {raw!r} is outside the adapter root {root}", field=field)
    return path


def resolve_on_volume(root: Path, source: str, field: str = "source") -> Path:
    """The directory a volume source names, as the engine sees it (under `root`). Blocking: call in a thread."""
    raw = source.removeprefix("pvc://") if source.startswith("pvc://") else source
    if not raw or raw == "/":
        raise InvalidSource(f"{field} {source!r} names no directory", field=field)
    path = confine(root, raw, field)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise SourceAccessDenied(f"{field} {source!r} leads outside the adapter root {root}", field=field)
    if not real.is_dir():
        raise SourceNotFound(f"{field} {source!r}: no such directory", field=field)
    # The engine mounts the volume at `root`, not necessarily at its real path: hand it the path under `root`.
    return root / real.relative_to(real_root)


class VolumeFetcher:
    """Sources on the shared volume are used in place; all others go to `remote` (or are refused without one)."""

    def __init__(
        self, root: Path, remote: RemoteDownload | None = None, limiter: trio.CapacityLimiter | None = None
    ) -> None:
        self.root = root
        self.remote = remote
        self._limiter = limiter

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        if is_volume_source(source):
            return await trio.to_thread.run_sync(resolve_on_volume, self.root, source, limiter=self._limiter)
        if self.remote is None:
            raise InvalidSource(
                f"source {display_source(source)!r} is not on the shared volume and this outrider has no download "
                f"engine: give an absolute path or pvc://path under {self.root}",
                field="source",
            )
        return await self.remote(source, config, dest)


@dataclasses.dataclass
class _Pending:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: Path | None = None
    error: BaseException | None = None


class SharedFetches:
    """Concurrent fetches of the same source into the same directory share one call to the wrapped fetcher.

    A caller that joins a fetch in progress gets its result or its error. If the fetch was cancelled (its owner
    went away), a joiner starts its own."""

    def __init__(self, inner: AdapterFetcher) -> None:
        self.inner = inner
        self._inflight: dict[tuple[str, str], _Pending] = {}

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        key = (source, str(dest))
        while (pending := self._inflight.get(key)) is not None:
            await pending.done.wait()
            if pending.result is not None:
                return pending.result
            if pending.error is not None and not isinstance(pending.error, trio.Cancelled):
                raise pending.error
        pending = self._inflight[key] = _Pending()
        try:
            pending.result = await self.inner.fetch(name, source, config, dest)
            return pending.result
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._inflight[key]
            pending.done.set()
