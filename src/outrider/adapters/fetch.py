"""Where an adapter's files come from: the seam between the reconciler and the download engine.

The reconciler asks an `AdapterFetcher` for a local directory the engine can load, and never asks what kind of
source it was. `VolumeFetcher` gives volume sources the meaning they have on every route: `pvc://path` is a
directory under `--pvc-root` (refused while none is set), an absolute path a directory under the adapter root or
the pvc root. One the engine can already read (its real path lies under the adapter root, which the engine mounts
at the same path) is used in place; any other is copied into the adapter's directory by the download engine,
verified and published atomically, like every remote source (S3, OBS, TOS, Hugging Face). Without a download
engine such a source is an `InvalidSource` (400) saying so. `SharedFetches` wraps any fetcher so concurrent
fetches of one source into one directory share a single download.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

import trio

from outrider.adapters.names import directory_name, display_source
from outrider.errors import InvalidSource, OutriderError, SourceAccessDenied, SourceNotFound
from outrider.sources.uri import VolumeRef, parse_source
from outrider.transfer.paths import Root, confine_any, probe_limiter

#: Download `source` (with its per-request options, e.g. credentials) into the directory `dest` and return the
#: directory holding the adapter. The transfer engine provides it; it must publish atomically (nothing
#: half-written under `dest`) and raise `outrider.errors.SourceError` subclasses.
RemoteDownload = Callable[[str, Mapping[str, object] | None, Path], Awaitable[Path]]


@dataclasses.dataclass(frozen=True)
class Fetched:
    """Where an adapter's files are, and whether outrider wrote them (then it deletes them once the adapter is
    no longer declared; a directory it was only pointed at is never deleted)."""

    path: Path
    downloaded: bool


class AdapterFetcher(Protocol):
    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        """Make adapter `name` from `source` available on the shared volume: the directory the engine should load
        (`dest` for downloads and copies, the source directory itself when the engine can read it in place).
        Raises `outrider.errors.SourceError` subclasses (InvalidSource, SourceNotFound, SourceAccessDenied, ...)
        and `PathOutsideRoot` when `dest` leads out of the adapter root."""
        ...


def is_volume_source(source: str) -> bool:
    return source.startswith("/") or source.startswith("pvc://")


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def place_on_volume(source: str, *, adapter_root: Path, pvc_root: str | None) -> Path | None:
    """For a volume source: the directory to hand the engine when it can read it in place (a path under
    `adapter_root` as the engine sees it), or None when it must be copied under the adapter root first.
    Raises InvalidSource, SourceAccessDenied (leads outside both roots, or pvc:// without a pvc root) or
    SourceNotFound. Blocking: it resolves symlinks; call it in a thread."""
    ref = parse_source(source)
    if not isinstance(ref, VolumeRef):  # parse_source reads only "/..." and "pvc://..." as volume sources
        raise InvalidSource(f"source {display_source(source)!r} is not on a volume", field="source")
    real_adapters = os.path.realpath(adapter_root)
    real_pvc = os.path.realpath(pvc_root) if pvc_root is not None else None
    if ref.relative:
        if real_pvc is None:
            raise SourceAccessDenied(
                f"source {ref.display!r}: pvc:// sources are disabled (no --pvc-root is set)", field="source"
            )
        real = os.path.realpath(os.path.join(real_pvc, ref.path))
        allowed = _inside(real, real_pvc)
    else:
        real = os.path.realpath(ref.path)
        allowed = _inside(real, real_adapters) or (real_pvc is not None and _inside(real, real_pvc))
    if not allowed:
        roots = "--pvc-root" if ref.relative else "the adapter root or --pvc-root"
        raise SourceAccessDenied(f"source {ref.display!r} leads outside {roots}", field="source")
    if not os.path.isdir(real):
        raise SourceNotFound(f"source {ref.display!r}: no such directory", field="source")
    if not _inside(real, real_adapters):
        return None
    # The engine mounts the volume at `adapter_root`, not necessarily at its real path: hand it the path under it.
    return adapter_root / os.path.relpath(real, real_adapters)


class VolumeFetcher:
    """Sources the engine can read are used in place; all others go to `remote` (or are refused without one)."""

    def __init__(
        self,
        root: Path,
        remote: RemoteDownload | None = None,
        *,
        pvc_root: str | None = None,
        limiter: trio.CapacityLimiter | None = None,
        write_roots: tuple[Root, ...] = (),
    ) -> None:
        self.root = root
        # Where a download may land: the adapter root, and any other directory a caller may name (see Reconciler).
        self.write_roots: tuple[Root, ...] = ((root, "--adapter-root"), *write_roots)
        self.remote = remote
        self.pvc_root = pvc_root
        self._limiter = limiter

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        if is_volume_source(source):
            in_place = await trio.to_thread.run_sync(
                lambda: place_on_volume(source, adapter_root=self.root, pvc_root=self.pvc_root),
                limiter=self._limiter or probe_limiter(),
                abandon_on_cancel=True,
            )
            if in_place is not None:
                return Fetched(in_place, downloaded=False)
        if self.remote is None:
            raise InvalidSource(
                f"source {display_source(source)!r} is not on the shared volume and this outrider has no download "
                f"engine: give a directory under {self.root}",
                field="source",
            )
        # Confined again here, symlinks resolved, right before anything is written (the caller checked it when the
        # adapter was declared; a link made since must not lead the write elsewhere).
        target = await trio.to_thread.run_sync(
            confine_any,
            self.write_roots,
            str(dest),
            "output_dir",
            limiter=self._limiter or probe_limiter(),
            abandon_on_cancel=True,
        )
        try:
            return Fetched(await self.remote(source, config, target), downloaded=True)
        except OutriderError as exc:
            if exc.field != "dest":
                raise
            # The download engine's `dest` is the adapter's directory: its own name's, or the `output_dir` asked.
            renamed = exc.clone()
            renamed.field = "name" if dest == self.root / directory_name(name) else "output_dir"
            raise renamed from None


@dataclasses.dataclass
class _Pending:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: Fetched | None = None
    error: OutriderError | None = None


class SharedFetches:
    """Concurrent fetches of the same source into the same directory share one call to the wrapped fetcher.

    A caller that joins a fetch in progress gets its result, or its own copy of its error (an exception object is
    never raised in two tasks: each raise adds to its traceback). If the fetch ended any other way (cancelled
    because its owner went away, or a bug), a joiner starts its own."""

    def __init__(self, inner: AdapterFetcher) -> None:
        self.inner = inner
        self._inflight: dict[tuple[str, str], _Pending] = {}

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        key = (source, str(dest))
        while (pending := self._inflight.get(key)) is not None:
            await pending.done.wait()
            if pending.result is not None:
                return pending.result
            if pending.error is not None:
                raise pending.error.clone() from None
        pending = self._inflight[key] = _Pending()
        try:
            pending.result = await self.inner.fetch(name, source, config, dest)
            return pending.result
        except OutriderError as exc:
            pending.error = exc
            raise
        finally:
            del self._inflight[key]
            pending.done.set()
