"""The transfer engine's small parts: checksums, destination confinement, filters, download settings."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random
from pathlib import Path

import pytest

from outrider.cli import build_parser, serve_settings
from outrider.errors import InvalidRequest, InvalidSource, SourceNotFound
from outrider.option_types import size
from outrider.settings import SettingsError
from outrider.sources.base import VERIFY_COST, Checksum, RemoteFile
from outrider.sources.s3 import checksum_from_head
from outrider.transfer import state
from outrider.transfer.checksums import SUPPORTED, Crc64Ecma, chunk_digest, chunked, combined, matches, new_digest
from outrider.transfer.paths import confine, join_under
from outrider.transfer.plan import Filters, select


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"123456789", 0x995DC9BBDF1939FA),  # the CRC-64/XZ check value (ECMA-182 polynomial, reflected)
        (b"a", 0x330284772E652B05),
        (b"\x00" * 32, 0xC95AF8617CD5330C),
    ],
)
def test_crc64ecma_known_vectors(data: bytes, expected: int) -> None:
    crc = Crc64Ecma()
    crc.update(data)
    assert crc.value() == str(expected)


def test_crc64ecma_is_incremental() -> None:
    data = os.urandom(100_000)
    whole, parts = Crc64Ecma(), Crc64Ecma()
    whole.update(data)
    for i in range(0, len(data), 7919):
        parts.update(data[i : i + 7919])
    assert whole.value() == parts.value()


def test_checksum_comparison_rules() -> None:
    assert matches(Checksum("md5", "ABCDEF"), "abcdef")
    assert matches(Checksum("crc64ecma", "0042"), "42")
    assert not matches(Checksum("crc64ecma", "not-a-number"), "42")
    assert new_digest(Checksum("whirlpool", "x")) is None  # unknown algorithms are not verified, not failed


@pytest.mark.parametrize(
    ("algorithm", "check"),
    [  # the check values ("123456789") of the CRC catalogue and of the hash standards
        ("crc32", "cbf43926"),
        ("crc32c", "e3069283"),
        ("crc64nvme", "ae8b14860a799888"),
        ("sha1", "f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
        ("sha256", "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"),
        ("md5", "25f9e794323b453885f5181f1b624d0b"),
    ],
)
def test_store_checksums_match_their_check_values_fed_in_pieces(algorithm: str, check: str) -> None:
    digest = new_digest(Checksum(algorithm, check))
    assert digest is not None
    for piece in (b"1", b"2345", b"", b"6789"):
        digest.update(piece)
    assert matches(Checksum(algorithm, check.upper()), digest.value())


def test_a_multipart_etag_is_the_md5_of_its_parts_md5s_however_it_is_fed_or_cut() -> None:
    rnd = random.Random(17)
    data, part = rnd.randbytes(10_000), 3_000
    md5s = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-4"
    whole = new_digest(Checksum("md5-parts", etag, part))
    assert whole is not None
    pos = 0
    while pos < len(data):  # pieces that straddle part boundaries
        step = rnd.randrange(1, 2_500)
        whole.update(data[pos : pos + step])
        pos += step
    assert matches(Checksum("md5-parts", etag.upper(), part), whole.value())
    checksum = Checksum("md5-parts", etag, part)
    assert chunked(checksum, 2 * part) and not chunked(checksum, part + 1)
    chunks = []
    for start in range(0, len(data), 2 * part):  # chunks of two parts each, hashed separately, combined
        digest = chunk_digest(checksum)
        digest.update(data[start : start + 2 * part])
        chunks.append((digest, len(data[start : start + 2 * part])))
    assert combined(checksum, chunks) == etag
    assert new_digest(Checksum("md5-parts", etag)) is None  # without its part size it cannot be computed


def test_every_ranked_checksum_can_be_computed() -> None:
    assert set(VERIFY_COST) == set(SUPPORTED)


def _b64(hex_value: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_value)).decode()


def test_s3_head_checksums_only_of_the_whole_object_and_the_cheapest() -> None:
    sha, md5 = "ab" * 32, Checksum("md5", "cd" * 16)
    both = {"ChecksumSHA256": _b64(sha), "ChecksumCRC32": _b64("0a0b0c0d")}
    crc32 = Checksum("crc32", "0a0b0c0d")
    assert checksum_from_head({**both, "ChecksumType": "FULL_OBJECT"}, None, single_part=False) == crc32
    assert checksum_from_head({"ChecksumSHA256": _b64(sha)}, md5, single_part=True) == Checksum("sha256", sha)
    assert checksum_from_head({"ChecksumCRC64NVME": _b64("01020304" * 2)}, md5, single_part=True) == md5
    assert checksum_from_head({"ChecksumCRC32C": _b64("01020304")}, md5, single_part=True) == Checksum(
        "crc32c", "01020304"
    )
    # A checksum of the parts' checksums says nothing we can compute from the bytes.
    assert checksum_from_head({**both, "ChecksumType": "COMPOSITE"}, None, single_part=False) is None
    assert checksum_from_head(both, None, single_part=False) is None  # multipart and no type given: could be composite
    composite_value = {"ChecksumCRC32": _b64("0a0b0c0d") + "-3", "ChecksumSHA256": _b64(sha)}
    assert checksum_from_head(composite_value, None, single_part=True) == Checksum("sha256", sha)
    assert checksum_from_head({"ChecksumCRC32": "not base64!"}, None, single_part=True) is None
    # The ETag of an object encrypted with a KMS or customer key is not its MD5; SSE-S3's is.
    for encrypted in ({"ServerSideEncryption": "aws:kms"}, {"SSECustomerAlgorithm": "AES256"}):
        assert checksum_from_head(encrypted, md5, single_part=True) is None
        assert checksum_from_head({**encrypted, **both}, md5, single_part=True) == crc32
    assert checksum_from_head({"ServerSideEncryption": "AES256"}, md5, single_part=True) == md5


def test_a_new_checksum_for_the_same_version_keeps_published_and_partial_files(tmp_path: Path) -> None:
    final = tmp_path / "w.bin"
    final.write_bytes(b"x" * 10)
    old = RemoteFile("w.bin", 10, Checksum("md5", "ab" * 16), "etag-1")
    record = state.Record("s3://b/m", None, {"w.bin": state.published_entry(old, os.stat(final))})
    offered = RemoteFile("w.bin", 10, Checksum("crc32", "0a0b0c0d"), "etag-1")
    assert record.is_current(offered, final)
    assert not record.is_current(RemoteFile("w.bin", 10, offered.checksum, "etag-2"), final)
    assert not record.is_current(RemoteFile("w.bin", 11, offered.checksum, "etag-1"), final)
    # Without a version, the checksum is all that tells two contents apart.
    unversioned_entry = state.published_entry(dataclasses.replace(old, version=None), os.stat(final))
    unversioned = state.Record("x", None, {"w.bin": unversioned_entry})
    assert not unversioned.is_current(dataclasses.replace(offered, version=None), final)
    assert unversioned.is_current(dataclasses.replace(old, version=None), final)

    part = tmp_path / "p.bin"
    state.part_path(part).write_bytes(b"\0" * 10)
    state.save_manifest(part, state.Manifest(state.remote_identity(old), 4, {0, 2}, {0, 2}))
    resumed = state.load_manifest(part, offered, 4)
    assert resumed is not None and resumed.done == {0, 2}
    assert state.load_manifest(part, dataclasses.replace(offered, version="etag-2"), 4) is None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "models"
    r.mkdir()
    (tmp_path / "outside").mkdir()
    (r / "escape").symlink_to(tmp_path / "outside")
    (r / "inside").symlink_to(r / "real")
    (r / "file.bin").write_bytes(b"x")
    return r


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../x",
        "a/../../x",
        "a/../b",
        "x/..",
        "%2e%2e/x",
        "a/%2E%2E/%2e%2E/x",
        "/etc",
        "/",
        "",
        " ",
        "a\x00b",
        "escape",
        "escape/deeper",
        ".",
        "file.bin",
    ],
)
def test_confine_refuses_every_escape(root: Path, raw: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        confine(root, raw, "dest")
    assert info.value.field == "dest"


def test_confine_accepts_relative_absolute_and_inner_symlinks(root: Path) -> None:
    assert confine(root, "llama/7b", "dest") == root / "llama" / "7b"
    assert confine(root, str(root / "abs"), "dest") == root / "abs"
    assert confine(root, "inside/m", "dest") == root / "real" / "m"
    assert confine(root, "a%20b", "dest") == root / "a%20b"  # a literal name, not an escape


@pytest.mark.parametrize("path", ["../x", "/abs", "a//b", "./a", "a/./b", ""])
def test_a_store_listing_cannot_place_files_outside_dest(tmp_path: Path, path: str) -> None:
    with pytest.raises(InvalidSource):
        join_under(tmp_path, path)


FILES = [
    RemoteFile(p, 1) for p in ("config.json", "model.safetensors", "sub/x.safetensors", "original/w.bin", "README")
]


def paths(files: list[RemoteFile]) -> list[str]:
    return [f.path for f in files]


def test_filters_suffix_include_exclude() -> None:
    assert paths(select(FILES, Filters(suffixes=("json", "safetensors")), "s")) == [
        "config.json",
        "model.safetensors",
        "sub/x.safetensors",
    ]
    assert paths(select(FILES, Filters(include=("*.safetensors",)), "s")) == ["model.safetensors", "sub/x.safetensors"]
    assert paths(select(FILES, Filters(include=("sub/*",)), "s")) == ["sub/x.safetensors"]
    assert "original/w.bin" not in paths(select(FILES, Filters(exclude=("original/*",)), "s"))


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        (Filters(suffixes=("gguf",)), "allow_file_suffix"),
        (Filters(include=("*.gguf",)), "include"),
        (Filters(exclude=("*",)), "exclude"),
    ],
)
def test_an_empty_selection_names_the_filter(filters: Filters, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        select(FILES, filters, "s3://b/p")
    assert info.value.field == field and "s3://b/p" in info.value.message


def test_an_empty_listing_is_not_found() -> None:
    with pytest.raises(SourceNotFound, match="s3://b/p"):
        select([], Filters(), "s3://b/p")


def test_download_settings_flags_and_peer_env() -> None:
    args = build_parser().parse_args(["serve", "-E", "vllm", "--chunk-size", "32MiB", "--allow-request-endpoints"])
    env = {
        "DOWNLOADER_LOCAL_DIR": "/data/models",
        "DOWNLOADER_NUM_THREADS": "16",
        "DOWNLOADER_ALLOW_FILE_SUFFIX": "json, .safetensors",
        "OUTRIDER_PVC_ROOT": "/mnt/pvc",
    }
    d = serve_settings(args, env).downloads
    assert (d.model_root, d.workers, d.chunk_size) == ("/data/models", 16, 32 * 1024 * 1024)
    assert d.allow_suffixes == ("json", "safetensors") and d.pvc_root == "/mnt/pvc" and d.allow_request_endpoints
    defaults = serve_settings(build_parser().parse_args(["serve", "-E", "vllm"]), {}).downloads
    assert (defaults.model_root, defaults.workers, defaults.chunk_size) == ("/models", 8, 16 * 1024 * 1024)
    assert defaults.allow_suffixes == () and not defaults.allow_request_endpoints


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OUTRIDER_MODEL_ROOT": "relative"}, "--model-root"),
        ({"OUTRIDER_DOWNLOAD_WORKERS": "0"}, "--download-workers"),
        ({"OUTRIDER_DOWNLOAD_WORKERS": "many"}, "--download-workers"),
        ({"OUTRIDER_CHUNK_SIZE": "1k"}, "--chunk-size"),
        ({"OUTRIDER_ALLOW_REQUEST_ENDPOINTS": "maybe"}, "--allow-request-endpoints"),
    ],
)
def test_bad_download_settings_are_one_line(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        serve_settings(build_parser().parse_args(["serve", "-E", "vllm"]), env)


def test_sizes() -> None:
    assert size("16MiB") == size("16m") == size("16777216") == 16 * 1024 * 1024
    assert size("512KiB") == 512 * 1024


def test_a_manifest_of_another_chunk_size_is_translated_not_discarded(tmp_path: Path) -> None:
    size = 10 * 1024
    remote = RemoteFile("w.bin", size, None, "etag-1")
    final = tmp_path / "w.bin"
    state.part_path(final).write_bytes(b"\0" * size)
    # Chunks of 1 KiB: 0-3 done, 4 written up to byte 4700, 7 done.
    written = state.Manifest(state.remote_identity(remote), 1024, {0, 1, 2, 3, 7}, {0, 1}, {4: 4700})
    state.save_manifest(final, written)
    # In chunks of 2 KiB: [0, 4 KiB) is two whole chunks, [4 KiB, 6 KiB) half written, [6, 8) not from its start.
    resumed = state.load_manifest(final, remote, 2048)
    assert resumed is not None and resumed.chunk_size == 2048
    assert resumed.done == {0, 1} and resumed.partial == {2: 4700} and resumed.durable == {0}
    # In chunks of 512 B: every written byte still counts.
    finer = state.load_manifest(final, remote, 512)
    assert finer is not None
    assert finer.done == set(range(9)) | {14, 15} and finer.partial == {9: 4700} and finer.durable == {0, 1, 2, 3}


def test_partial_chunks_are_kept_within_their_chunk_and_dropped_after_a_reboot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RemoteFile("w.bin", 4096, None, "etag-1")
    final = tmp_path / "w.bin"
    state.part_path(final).write_bytes(b"\0" * 4096)
    manifest = state.Manifest(state.remote_identity(remote), 1024, {0}, set(), {1: 1500, 2: 4000, 3: 3072})
    state.save_manifest(final, manifest, durable=False)
    loaded = state.load_manifest(final, remote, 1024)
    assert loaded is not None and loaded.partial == {1: 1500}  # 4000 lies outside chunk 2; 3072 is no progress
    monkeypatch.setattr(state, "boot_id", lambda: "another-boot")
    rebooted = state.load_manifest(final, remote, 1024)
    assert rebooted is not None and rebooted.done == set() and rebooted.partial == {}


@pytest.mark.parametrize("change", ["rewritten in place", "replaced", "truncated"])
def test_a_record_is_trusted_only_while_the_file_is_the_one_published(tmp_path: Path, change: str) -> None:
    final = tmp_path / "w.bin"
    final.write_bytes(b"x" * 10)
    remote = RemoteFile("w.bin", 10, None, "etag-1")
    record = state.Record("s3://b/m", None, {"w.bin": state.published_entry(remote, os.stat(final))})
    assert record.is_current(remote, final)
    before = os.stat(final)
    if change == "rewritten in place":
        with open(final, "r+b") as f:
            f.write(b"\0" * 10)
        os.utime(final, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a clock of coarse granularity
    elif change == "replaced":
        other = tmp_path / "other"
        other.write_bytes(b"\0" * 10)
        os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime, another inode
        os.replace(other, final)
    else:
        os.truncate(final, 5)
    assert not record.is_current(remote, final)
    legacy = state.Record("s3://b/m", None, {"w.bin": state.remote_identity(remote)})  # no `local`: re-fetched
    assert not legacy.is_current(remote, final)
