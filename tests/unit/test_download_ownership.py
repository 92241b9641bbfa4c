"""transfer/ownership.py on a real directory tree: what counts as outrider's, and what a removal may touch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outrider.errors import Conflict
from outrider.transfer import ownership, state
from outrider.transfer.lock import LOCK_NAME, DestinationLock


def recorded(dest: Path, source: str, files: dict[str, bytes]) -> None:
    """A directory as the download engine leaves it: the files, and its record listing them."""
    for path, data in files.items():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_bytes(data)
    entries = {path: {"size": len(data), "version": None, "checksum": None} for path, data in files.items()}
    state.save_record(dest, state.Record(source=source, revision=None, files=entries, complete=True))


def test_absent_empty_and_own_same_source_directories_may_be_claimed(tmp_path: Path) -> None:
    assert ownership.claim(tmp_path / "absent", "s3://b/m", "dest") is None
    (tmp_path / "empty").mkdir()
    assert ownership.claim(tmp_path / "empty", "s3://b/m", "dest") is None
    recorded(tmp_path / "ours", "s3://b/m", {"a.bin": b"a"})
    record = ownership.claim(tmp_path / "ours", "s3://b/m", "dest")
    assert record is not None and record.source == "s3://b/m"


@pytest.mark.parametrize("what", ["foreign files", "another source", "a non-empty lost+found"])
def test_anything_else_is_a_conflict_naming_the_field(tmp_path: Path, what: str) -> None:
    dest = tmp_path / "d"
    dest.mkdir()
    if what == "foreign files":
        (dest / "adapter_config.json").write_text("{}")
    elif what == "another source":
        recorded(dest, "s3://b/other", {"a.bin": b"a"})
    else:
        (dest / "lost+found").mkdir()
        (dest / "lost+found" / "#12").write_bytes(b"recovered")
    with pytest.raises(Conflict) as caught:
        ownership.claim(dest, "s3://b/m", "output_dir")
    assert caught.value.field == "output_dir" and caught.value.status == 409


def test_removal_deletes_only_listed_files_and_keeps_a_directory_with_others(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    recorded(dest, "s3://b/m", {"a.bin": b"a", "sub/b.bin": b"b", "deep/er/c.bin": b"c"})
    (dest / "sub" / "mine.txt").write_text("not outrider's")
    state.part_path(dest / "a.bin").write_bytes(b"partial refetch")

    removal = ownership.remove_download(dest)

    assert removal == ownership.Removal(files=3, directory_removed=False, recorded=True)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["sub", "sub/mine.txt"]


def test_removal_of_a_download_alone_removes_its_directory(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    recorded(dest, "s3://b/m", {"a.bin": b"a", "sub/b.bin": b"b"})
    assert ownership.remove_download(dest).directory_removed
    assert not dest.exists()


def test_removal_without_a_record_touches_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "adapter_config.json").write_text("{}")
    assert ownership.remove_download(dest) == ownership.Removal(0, directory_removed=False, recorded=False)
    assert (dest / "adapter_config.json").exists()


def test_removal_does_not_follow_a_symlink_out_of_the_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.bin").write_bytes(b"someone else's")
    dest = tmp_path / "d"
    recorded(dest, "s3://b/m", {"a.bin": b"a", "sub/b.bin": b"b"})
    (dest / "sub" / "b.bin").unlink()
    (dest / "sub").rmdir()
    os.symlink(outside, dest / "sub")  # swapped in after the download

    ownership.remove_download(dest)

    assert (outside / "b.bin").read_bytes() == b"someone else's"
    assert not (dest / "a.bin").exists()


async def test_the_destination_lock_is_outriders_own_and_goes_with_its_download(tmp_path: Path) -> None:
    # A download stopped before its record: only its lock file is left, and the directory is still no one's.
    held = DestinationLock(tmp_path / "stopped")
    await held.acquire()
    await held.release()
    assert ownership.claim(tmp_path / "stopped", "s3://b/m", "dest") is None

    # A removal while another process writes there keeps the lock (and so the directory) for that writer.
    dest = tmp_path / "d"
    recorded(dest, "s3://b/m", {"a.bin": b"a"})
    writer = DestinationLock(dest)
    await writer.acquire()
    assert not ownership.remove_download(dest).directory_removed and (dest / LOCK_NAME).exists()
    await writer.release()

    # Once nobody holds it, the lock goes with the download, and the directory with them.
    recorded(dest, "s3://b/m", {"a.bin": b"a"})
    assert ownership.remove_download(dest).directory_removed and not dest.exists()


def test_the_record_being_written_by_the_lock_holder_is_not_someone_elses_file(tmp_path: Path) -> None:
    # What a process planning at the same moment sees: the lock, and the record's temporary before its rename.
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / LOCK_NAME).write_text("{}")
    (dest / f".{state.RECORD_NAME}.0a1b2c3d.tmp").write_text("{}")
    assert ownership.claim(dest, "s3://b/m", "dest") is None
    (dest / ".config.json.0a1b2c3d.tmp").write_text("{}")  # not the record's: someone else's file
    with pytest.raises(Conflict):
        ownership.claim(dest, "s3://b/m", "dest")
