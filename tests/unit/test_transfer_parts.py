"""The transfer engine's small parts: checksums, destination confinement, filters, download settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from outrider.cli import build_parser, serve_settings
from outrider.errors import InvalidRequest, InvalidSource, SourceNotFound
from outrider.settings import SettingsError, parse_size
from outrider.sources.base import Checksum, RemoteFile
from outrider.transfer.checksums import Crc64Ecma, matches, new_digest
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
    assert new_digest(Checksum("sha1", "x")) is None  # unknown algorithms are not verified, not failed


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
    assert parse_size("16MiB", "x") == parse_size("16m", "x") == parse_size("16777216", "x") == 16 * 1024 * 1024
    assert parse_size("512KiB", "x") == 512 * 1024
