"""Local volume sources (`pvc://`, absolute paths) on a real directory tree, confined to the pvc root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outrider.errors import InvalidRequest, InvalidSource, SourceAccessDenied, SourceNotFound
from outrider.sources import Source, SourceOptions, open_source
from tests.servers.tree import BIG, BIG_RANGES, model_tree, read_all

TREE = model_tree()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pvc = tmp_path / "pvc"
    for path, data in TREE.items():
        target = pvc / "models" / "llama" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"not yours")
    return pvc


def local(source: str, root: Path) -> Source:
    return open_source(source, SourceOptions(), pvc_root=root, max_workers=2)


@pytest.mark.parametrize("spelling", ["pvc://models/llama", "pvc://models/llama/", "ABS", "pvc://ABS"])
def test_lists_the_tree_with_mtime_size_versions(root: Path, spelling: str) -> None:
    source = local(spelling.replace("ABS", str(root / "models" / "llama")), root)
    files = {f.path: f for f in source.list_files()}
    assert set(files) == set(TREE)
    for path, data in TREE.items():
        st = os.stat(root / "models" / "llama" / path)
        assert files[path].size == len(data)
        assert files[path].checksum is None
        assert files[path].version == f"{st.st_mtime_ns}-{st.st_size}"


@pytest.mark.parametrize(("start", "end"), BIG_RANGES)
def test_reads_ranges_byte_exact(root: Path, start: int, end: int) -> None:
    assert read_all(local("pvc://models/llama", root), BIG, start, end) == TREE[BIG][start:end]


def test_version_changes_when_a_file_is_rewritten(root: Path) -> None:
    source = local("pvc://models/llama", root)
    before = {f.path: f.version for f in source.list_files()}["config.json"]
    target = root / "models" / "llama" / "config.json"
    target.write_bytes(b'{"changed": true, "longer": 1}')
    after = {f.path: f.version for f in source.list_files()}["config.json"]
    assert before != after


def test_symlinks_inside_the_root_are_followed(root: Path) -> None:
    (root / "blobs").mkdir()
    (root / "blobs" / "abc").write_bytes(b"blob bytes")
    snapshot = root / "snapshot"
    snapshot.mkdir()
    (snapshot / "weights.bin").symlink_to(root / "blobs" / "abc")
    (snapshot / "tok").symlink_to(root / "models" / "llama" / "tokenizer", target_is_directory=True)
    (snapshot / "loop").symlink_to(snapshot, target_is_directory=True)
    source = local("pvc://snapshot", root)
    paths = {f.path for f in source.list_files()}
    assert paths == {"weights.bin", "tok/tokenizer.json", "tok/merges/merges.txt"}
    assert read_all(source, "weights.bin", 0, 10) == b"blob bytes"


@pytest.mark.parametrize("source", ["pvc://../outside", "pvc://models/../../outside"])
def test_dotdot_is_refused_at_parse(root: Path, source: str) -> None:
    with pytest.raises(InvalidSource):
        local(source, root)


def test_absolute_path_elsewhere_is_access_denied(root: Path) -> None:
    with pytest.raises(SourceAccessDenied, match="outside"):
        local(str(root.parent / "outside"), root)
    with pytest.raises(SourceAccessDenied):
        local("/etc", root)


def test_root_prefix_trick_is_access_denied(root: Path) -> None:
    """/x/pvc-evil starts with the string /x/pvc but is not under it."""
    evil = root.parent / (root.name + "-evil")
    evil.mkdir()
    (evil / "f").write_bytes(b"x")
    with pytest.raises(SourceAccessDenied):
        local(str(evil), root)


def test_symlinked_source_dir_escaping_the_root_is_access_denied(root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "outside", target_is_directory=True)
    with pytest.raises(SourceAccessDenied):
        local("pvc://escape", root)


def test_symlinked_file_escaping_the_root_is_access_denied(root: Path) -> None:
    link = root / "models" / "llama" / "stolen.txt"
    link.symlink_to(root.parent / "outside" / "secret.txt")
    source = local("pvc://models/llama", root)
    with pytest.raises(SourceAccessDenied):
        source.list_files()
    with pytest.raises(SourceAccessDenied):
        list(source.read_range("stolen.txt", 0, 5))


def test_link_swapped_after_listing_cannot_lead_a_read_out(root: Path) -> None:
    source = local("pvc://models/llama", root)
    source.list_files()
    target = root / "models" / "llama" / "config.json"
    target.unlink()
    target.symlink_to(root.parent / "outside" / "secret.txt")
    with pytest.raises(SourceAccessDenied):
        list(source.read_range("config.json", 0, 5))


@pytest.mark.parametrize("path", ["../../outside/secret.txt", "/etc/passwd", "a/../../b", ""])
def test_read_path_escapes_are_refused(root: Path, path: str) -> None:
    source = local("pvc://models/llama", root)
    with pytest.raises(InvalidRequest):
        list(source.read_range(path, 0, 5))


def test_missing_directory_and_file_are_not_found(root: Path) -> None:
    with pytest.raises(SourceNotFound):
        local("pvc://models/nothing-here", root).list_files()
    with pytest.raises(SourceNotFound):
        list(local("pvc://models/llama", root).read_range("nope.bin", 0, 1))


def test_no_pvc_root_disables_local_sources(root: Path) -> None:
    with pytest.raises(SourceAccessDenied, match="pvc-root"):
        open_source("pvc://models/llama", SourceOptions(), pvc_root=None, max_workers=1)


def test_a_file_is_not_a_source_directory(root: Path) -> None:
    with pytest.raises(InvalidSource):
        local("pvc://models/llama/config.json", root).list_files()
