"""Which directories are outrider's: the only ones it downloads into, and the only files it deletes.

A volume outrider writes to is shared: an operator's adapter or model directory, used in place, sits beside the
ones outrider downloaded. Two rules keep outrider's hands off what it did not write:

- `claim`: a download lands only in a directory that is absent, empty (an empty `lost+found`, the mark of a fresh
  file system's root, counts as empty), or holds outrider's record (`transfer/state.py`) of a download of the same
  source. Anything else is a 409 naming the request's field: a directory of files outrider did not write, or
  outrider's download of another source (another adapter's, another model's).
- `remove_download`: deleting a download removes only the files its record lists (and their part files), the
  record, the directories that are left empty on the way, then the directory itself if nothing else is in it.
  A file someone added beside them stays, and keeps the directory.

Both take a directory already confined to its root (`transfer.paths.confine`: every symlink on the way resolved).
A listed path that a symlink inside the directory would lead elsewhere is not followed. Both block (they read
the volume): call them from a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path

from outrider.errors import Conflict, InvalidRequest
from outrider.transfer import lock, state

# What a fresh ext4/xfs volume's root holds before anyone wrote to it: not someone's files.
_FILE_SYSTEM_LEFTOVERS = frozenset({"lost+found"})
# outrider's own bookkeeping that holds no data: the destination lock (lock.py), left by a download that stopped
# before it wrote its record, and the record's temporary while the writer holding the lock writes it first (another
# process planning meanwhile sees it before the record; measured: bench/shared_cache_bench.py hit it at 4 pods).
_OWN_LEFTOVERS = frozenset({lock.LOCK_NAME})
_RECORD_TEMPORARY = re.compile(rf"^\.{re.escape(state.RECORD_NAME)}\.[0-9a-f]{{8}}\.tmp$")


def claim(dest: Path, source: str, field: str) -> state.Record | None:
    """Check that a download of `source` (its display form, as records hold it) may land in `dest`; returns the
    record found there (None for an absent or empty directory). Raises Conflict (409) or InvalidRequest (400, a
    file rather than a directory), naming `field`. Blocking."""
    try:
        entries = [e for e in os.listdir(dest) if not _leftover(dest, e)]
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise InvalidRequest(f"{dest} is a file, not a directory", field=field) from None
    if not entries:
        return None
    record = state.load_record(dest)
    if record is None:
        raise Conflict(
            f"{dest} already holds files outrider did not download; outrider downloads only into an "
            "absent or empty directory, or one it downloaded this source into before",
            field=field,
        )
    if record.source != source:
        raise Conflict(
            f"{dest} holds outrider's download of {record.source}, not of {source}; choose another "
            "directory, or remove that download first",
            field=field,
        )
    return record


def _leftover(dest: Path, entry: str) -> bool:
    if entry in _OWN_LEFTOVERS or _RECORD_TEMPORARY.match(entry):
        return True
    if entry not in _FILE_SYSTEM_LEFTOVERS:
        return False
    try:
        return not os.listdir(dest / entry)
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Removal:
    """What `remove_download` did: files deleted, and whether the directory itself went (it goes only when
    nothing outrider did not write is left in it)."""

    files: int
    directory_removed: bool
    recorded: bool  # False: there was no record, so nothing was outrider's to delete


def remove_download(dest: Path) -> Removal:
    """Delete what outrider's record in `dest` lists, then the record, then the directories left empty (see the
    module docstring). A directory with no record is left untouched. Blocking."""
    record = state.load_record(dest)
    if record is None:
        return Removal(0, directory_removed=False, recorded=False)
    real_dest = os.path.realpath(dest)
    removed = 0
    parents: set[Path] = set()
    for relative in record.files:
        try:
            final = _inside(dest, real_dest, relative)
        except ValueError:
            continue  # a path that is not a plain relative path, or leads out through a symlink: not followed
        for path in (final, state.part_path(final), state.manifest_path(final)):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(path)
                removed += path == final
        parents.update(p for p in final.parents if p != dest and dest in p.parents)
    os.unlink(dest / state.RECORD_NAME)
    lock.remove_if_free(dest)
    # Deepest first, so a directory emptied by its children's removal goes too; one with other files stays.
    for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    try:
        os.rmdir(dest)
    except OSError:
        return Removal(removed, directory_removed=False, recorded=True)
    return Removal(removed, directory_removed=True, recorded=True)


def _inside(dest: Path, real_dest: str, relative: str) -> Path:
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in relative:
        raise ValueError(relative)
    final = dest.joinpath(*parts)
    real_parent = os.path.realpath(final.parent)
    if real_parent != real_dest and not real_parent.startswith(real_dest.rstrip(os.sep) + os.sep):
        raise ValueError(relative)
    return final
