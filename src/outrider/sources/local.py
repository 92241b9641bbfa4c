"""`pvc://path` and absolute local paths: a directory on a volume already mounted in the pod.

Confinement: every path is resolved (symlinks included) and must stay under the pvc root (`--pvc-root`); one that
escapes, by `..`, an absolute path elsewhere, or a symlink pointing out, is refused with SourceAccessDenied.
Symlinks that stay inside the root are followed (a Hugging Face cache snapshot is all symlinks into its blobs);
a directory reached twice through links is listed once. Each read resolves its path again, so a link swapped
after the listing cannot lead a read outside the root.

No checksum is offered (reading the file to hash it costs what copying it does); `version` is
`{mtime_ns}-{size}`, which changes whenever the file is rewritten.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from outrider.errors import InvalidSource, SourceAccessDenied, SourceError, SourceNotFound
from outrider.sources._common import check_range, check_relative_path
from outrider.sources.base import PIECE_SIZE, RemoteFile, Source
from outrider.sources.uri import VolumeRef


class LocalSource(Source):
    """A directory under the pvc root."""

    def __init__(self, ref: VolumeRef, *, pvc_root: str | os.PathLike[str] | None) -> None:
        self.display = ref.display
        if pvc_root is None:
            raise SourceAccessDenied(f"{self.display}: local sources are disabled (no --pvc-root is set)")
        self._root = os.path.realpath(pvc_root)
        target = os.path.join(self._root, ref.path) if ref.relative else ref.path
        self._dir = self._confined(target)

    def _inside(self, real: str) -> bool:
        return real == self._root or real.startswith(self._root.rstrip(os.sep) + os.sep)

    def _confined(self, path: str) -> str:
        real = os.path.realpath(path)
        if not self._inside(real):
            raise SourceAccessDenied(f"{self.display}: the path resolves outside the volume root (--pvc-root)")
        return real

    def list_files(self) -> list[RemoteFile]:
        try:
            st = os.stat(self._dir)
        except FileNotFoundError:
            raise SourceNotFound(f"{self.display}: no such directory") from None
        except OSError as exc:
            raise SourceError(f"{self.display}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidSource(f"{self.display}: must name a directory", field="source")
        files: list[RemoteFile] = []
        self._walk(self._dir, "", {self._dir}, files)
        if not files:
            raise SourceNotFound(f"{self.display}: the directory holds no files")
        return files

    def _walk(self, directory: str, rel_prefix: str, seen: set[str], files: list[RemoteFile]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"{self.display}: cannot list {rel_prefix or '.'}: {exc.strerror}") from None
        for entry in entries:
            rel = rel_prefix + entry.name
            real = self._confined(entry.path)
            try:
                st = os.stat(real)
            except FileNotFoundError:
                raise SourceNotFound(f"{self.display}: {rel} is a broken symlink") from None
            if stat.S_ISDIR(st.st_mode):
                if real in seen:
                    continue  # a link loop, or a second way to the same directory
                seen.add(real)
                self._walk(real, rel + "/", seen, files)
            elif stat.S_ISREG(st.st_mode):
                files.append(RemoteFile(rel, st.st_size, None, f"{st.st_mtime_ns}-{st.st_size}"))
            # sockets, fifos and devices are not model files: skipped

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        check_relative_path(path)
        real = self._confined(os.path.join(self._dir, path))
        if start == end:
            return
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise SourceNotFound(f"{self.display}: {path}: no such file") from None
        except OSError as exc:
            raise SourceError(f"{self.display}: {path}: {exc.strerror}") from None
        try:
            offset = start
            while offset < end:
                piece = os.pread(fd, min(PIECE_SIZE, end - offset), offset)
                if not piece:
                    raise SourceError(f"{self.display}: {path}: the file ended at {offset}, before {end}")
                offset += len(piece)
                yield piece
        finally:
            os.close(fd)
