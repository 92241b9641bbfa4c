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
  file with its size, version and checksum. A file whose record entry matches the listing and whose size on disk is
  right is not fetched again; one that changed remotely is.
"""

from __future__ import annotations

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
_MANIFEST_FORMAT = 2
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


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
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


@dataclasses.dataclass
class Manifest:
    """The finished chunks of one part file: `done` (in the page cache at least) and `durable` (flushed to disk)."""

    identity: dict[str, Any]
    chunk_size: int
    done: set[int]
    durable: set[int] = dataclasses.field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _MANIFEST_FORMAT,
            **self.identity,
            "chunk_size": self.chunk_size,
            "boot_id": boot_id(),
            "done": sorted(self.done),
            "durable": sorted(self.durable & self.done),
        }


def load_manifest(final: Path, remote: RemoteFile, chunk_size: int) -> Manifest | None:
    """The manifest for `final` if it belongs to this remote file and chunk size and its part file is intact."""
    data = _read_json(manifest_path(final))
    if data is None or data.get("format") != _MANIFEST_FORMAT or data.get("chunk_size") != chunk_size:
        return None
    if not same_remote(data, remote):
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
    current = boot_id()
    if current is None or data.get("boot_id") != current:
        done = durable  # the machine restarted since: what was only in the page cache may never have reached disk
    return Manifest(identity, chunk_size, done, durable & done)


def _chunk_set(value: object) -> set[int] | None:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return None
    return set(value)


def save_manifest(final: Path, manifest: Manifest) -> None:
    write_json_atomic(manifest_path(final), manifest.to_json())


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

    def is_current(self, dest: Path, remote: RemoteFile, final: Path) -> bool:
        """Is `final` already the published copy of `remote`? (listing unchanged and size on disk right)"""
        entry = self.files.get(remote.path)
        if entry is None or not same_remote(entry, remote):
            return False
        try:
            return os.stat(final).st_size == remote.size
        except OSError:
            return False

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
