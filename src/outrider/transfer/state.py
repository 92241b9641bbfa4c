"""What survives a crash: the resume manifest beside each part file, and the record of a finished directory.

Both are small JSON files replaced atomically (write a temporary, fsync it, rename over, fsync the directory), so a
reader sees the old or the new content and never a torn one. All functions here block; call them from threads.

- `<file>.part` holds the bytes being fetched, at their offsets; `<file>.part.json` lists the chunks that are in it,
  with the remote size/version/checksum they belong to. A restart fetches only the missing chunks, or starts the
  file over when the remote file changed.
  Two lists, because flushing the part file's data to disk every second was the largest avoidable cost of a
  download (the writeback work lands on the downloader instead of the kernel's flusher threads): `done` is every
  finished chunk, trusted only within the same boot of the machine (a killed process or a restarted container
  leaves its writes in the page cache, which the next process reads), and `durable` the chunks written before the
  last fdatasync, the only ones trusted after a reboot. The manifest names the boot it was written in.
- `<dest>/.outrider-download.json` records the source (display form: no secrets), the revision and every published
  file with its size, version and checksum, and the file it became on disk (inode, size, mtime). A file whose entry
  matches the listing and which is still that very file is not fetched again; one that changed remotely, or was
  replaced or rewritten locally, is.
- Only the holder of the destination's lock (lock.py) writes any of these.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from outrider.sources.base import Checksum, RemoteFile

RECORD_NAME = ".outrider-download.json"
PART_SUFFIX = ".part"
MANIFEST_SUFFIX = ".part.json"
_FORMAT = 1
_MANIFEST_FORMAT = 3
# Format 2 had no `partial`: still read, so an upgrade resumes the downloads in flight.
_MANIFEST_FORMATS = (2, 3)
_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot of the machine (Linux), or None where the kernel does not say: then every chunk must be durable."""
    return _read_boot_id(_BOOT_ID_FILE)


@functools.cache
def _read_boot_id(path: Path) -> str | None:
    # Read once per path: it cannot change while the process lives, and every manifest save asks for it.
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def manifest_path(final: Path) -> Path:
    return final.with_name(final.name + MANIFEST_SUFFIX)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: object, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new content. `durable=False` skips the
    fsyncs: the rename is as atomic without them, only a reboot may lose (or empty) the file, and a reader treats
    an unreadable file as absent."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, payload)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # missing or unreadable: treated as absent, the safe direction (fetch again)
    return data if isinstance(data, dict) else None


def _checksum_json(checksum: Checksum | None) -> dict[str, str] | None:
    return None if checksum is None else {"algorithm": checksum.algorithm, "value": checksum.value}


def remote_identity(remote: RemoteFile) -> dict[str, Any]:
    """What must be unchanged for bytes fetched earlier to still be good."""
    return {"size": remote.size, "version": remote.version, "checksum": _checksum_json(remote.checksum)}


def same_remote(stored: dict[str, Any], remote: RemoteFile) -> bool:
    """Does a stored identity describe the same remote content? Size and version decide; the checksum only where
    the store gives no version. A store may offer a different (cheaper) checksum of the same object over time:
    S3 adds additional checksums, and a newer outrider picks another one. That must not refetch a whole model."""
    current = remote_identity(remote)
    if stored.get("size") != current["size"] or stored.get("version") != current["version"]:
        return False
    return remote.version is not None or stored.get("checksum") == current["checksum"]


def local_identity(st: os.stat_result) -> dict[str, int]:
    """What tells the published file from any other under its name: a rename keeps inode and mtime, a rewrite in
    place changes the mtime, a replacement the inode."""
    return {"size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


def published_entry(remote: RemoteFile, st: os.stat_result) -> dict[str, Any]:
    """The record's entry for a file just published: the remote content it holds and the file it is on disk."""
    return {**remote_identity(remote), "local": local_identity(st)}


@dataclasses.dataclass
class Manifest:
    """The finished chunks of one part file: `done` (in the page cache at least) and `durable` (flushed to disk)."""

    identity: dict[str, Any]
    chunk_size: int
    done: set[int]
    durable: set[int] = dataclasses.field(default_factory=set)
    # Unfinished chunks: index -> the file offset up to which the chunk's bytes are written. A process that takes
    # over a killed one's download goes on from there rather than fetch the chunk again (at 8 workers of 8 MiB,
    # up to 64 MiB a takeover would otherwise pay twice). Trusted within the same boot only, as `done` is.
    partial: dict[int, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _MANIFEST_FORMAT,
            **self.identity,
            "chunk_size": self.chunk_size,
            "boot_id": boot_id(),
            "done": sorted(self.done),
            "durable": sorted(self.durable & self.done),
            "partial": {str(i): pos for i, pos in sorted(self.partial.items()) if i not in self.done},
        }


def chunk_bounds(size: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


def load_manifest(final: Path, remote: RemoteFile, chunk_size: int) -> Manifest | None:
    """The manifest for `final` if it belongs to this remote file and its part file is intact, in chunks of
    `chunk_size` (one written with another chunk size is translated: see `_rechunk`)."""
    data = _read_json(manifest_path(final))
    if data is None or data.get("format") not in _MANIFEST_FORMATS or not same_remote(data, remote):
        return None
    stored_size = data.get("chunk_size")
    if not isinstance(stored_size, int) or isinstance(stored_size, bool) or stored_size <= 0:
        return None
    identity = remote_identity(remote)
    try:
        if os.stat(part_path(final)).st_size != remote.size:
            return None
    except OSError:
        return None
    done, durable = _chunk_set(data.get("done")), _chunk_set(data.get("durable"))
    if done is None or durable is None:
        return None
    partial = _partial(data.get("partial"), remote.size, stored_size)
    current = boot_id()
    if current is None or data.get("boot_id") != current:
        done = durable  # the machine restarted since: what was only in the page cache may never have reached disk
        partial = {}
    durable &= done
    if stored_size != chunk_size:
        done, partial = _rechunk(done, partial, stored_size, chunk_size, remote.size)
        durable, _ = _rechunk(durable, {}, stored_size, chunk_size, remote.size)
    return Manifest(identity, chunk_size, done, durable & done, {i: p for i, p in partial.items() if i not in done})


def _rechunk(done: set[int], partial: dict[int, int], old: int, new: int, size: int) -> tuple[set[int], dict[int, int]]:
    """The same written bytes in chunks of `new` bytes instead of `old`: a chunk all of whose bytes were written is
    done, one whose first bytes were is partial up to where they end. Another process (another --chunk-size or a
    request's chunk_size) that takes over a part file thus resumes it rather than fetch it all again."""
    spans = sorted(
        [(i * old, min(i * old + old, size)) for i in done if i * old < size]
        + [(i * old, pos) for i, pos in partial.items()]
    )
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    starts = [start for start, _ in merged]
    new_done, new_partial = set(), {}
    for index, (start, end) in enumerate(chunk_bounds(size, new)):
        at = bisect.bisect_right(starts, start) - 1
        if at < 0 or merged[at][1] <= start:
            continue
        if merged[at][1] >= end:
            new_done.add(index)
        else:
            new_partial[index] = merged[at][1]
    return new_done, new_partial


def _partial(value: object, size: int, chunk_size: int) -> dict[int, int]:
    """The valid entries of a manifest's `partial`: each offset strictly inside its chunk (anything else dropped,
    so that chunk is fetched whole)."""
    if not isinstance(value, dict):
        return {}
    partial = {}
    for key, pos in value.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(pos, int)) or isinstance(pos, bool):
            continue
        index = int(key)
        start = index * chunk_size
        if start < pos < min(start + chunk_size, size):
            partial[index] = pos
    return partial


def _chunk_set(value: object) -> set[int] | None:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return None
    return set(value)


def save_manifest(final: Path, manifest: Manifest, *, durable: bool = True) -> None:
    write_json_atomic(manifest_path(final), manifest.to_json(), durable=durable)


def remove_partial(final: Path) -> None:
    """Drop a file's part and manifest (a cancelled or failed fetch, or a remote change)."""
    for path in (manifest_path(final), part_path(final)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclasses.dataclass
class Record:
    """The record file of one destination directory."""

    source: str
    revision: str | None
    files: dict[str, dict[str, Any]]
    complete: bool = False

    def is_current(self, remote: RemoteFile, final: Path) -> bool:
        """Is `final` still the copy of `remote` that was published? The listing must be unchanged, and the file
        on disk the very file renamed into place then: same inode, size and modification time. A file replaced,
        rewritten or truncated since (by anyone) is fetched again; so is one recorded before outrider kept these."""
        entry = self.files.get(remote.path)
        if entry is None or not same_remote(entry, remote):
            return False
        local = entry.get("local")
        if not isinstance(local, dict):
            return False
        try:
            st = os.stat(final)
        except OSError:
            return False
        return remote.size == st.st_size == local.get("size") and local_identity(st) == local

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "source": self.source,
            "revision": self.revision,
            "complete": self.complete,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": self.files,
        }


def load_record(dest: Path) -> Record | None:
    data = _read_json(dest / RECORD_NAME)
    if data is None or data.get("format") != _FORMAT or not isinstance(data.get("files"), dict):
        return None
    return Record(
        source=str(data.get("source", "")),
        revision=data.get("revision") if isinstance(data.get("revision"), str) else None,
        files={k: v for k, v in data["files"].items() if isinstance(v, dict)},
        complete=data.get("complete") is True,
    )


def save_record(dest: Path, record: Record) -> None:
    write_json_atomic(dest / RECORD_NAME, record.to_json())
