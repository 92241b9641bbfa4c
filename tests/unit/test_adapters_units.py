"""Adapter names, the adapters file format, and volume confinement."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.adapters.fetch import SharedFetches, resolve_on_volume
from outrider.adapters.file import AdaptersFileError, parse_adapters
from outrider.adapters.names import display_source, validate_name
from outrider.adapters.reconciler import Declaration
from outrider.errors import InvalidRequest, InvalidSource, SourceAccessDenied, SourceNotFound


@pytest.mark.parametrize("name", ["a", "sql-lora", "A_1.v2", "_x", "x" * 128])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "x" * 129, ".", "..", ".hidden", "a b", "a\x00", 3, None])
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_name(name)
    assert info.value.field == "lora_name"


def test_display_source_hides_credentials() -> None:
    assert display_source("s3://key:secret@bucket/p") == "s3://bucket/p"
    assert display_source("pvc://a/b") == "pvc://a/b"
    assert display_source("/abs/path") == "/abs/path"


def test_parse_adapters_accepts_list_mapping_and_json() -> None:
    want = [Declaration("a", "pvc://a"), Declaration("b", "s3://x/b", {"endpoint": "http://e"})]
    yaml_text = "- name: a\n  source: pvc://a\n- name: b\n  source: s3://x/b\n  config: {endpoint: 'http://e'}\n"
    assert parse_adapters(yaml_text) == want
    assert parse_adapters("adapters:\n" + "".join("  " + line + "\n" for line in yaml_text.splitlines())) == want
    json_text = (
        '[{"name": "a", "source": "pvc://a"}, {"name": "b", "source": "s3://x/b", "config": {"endpoint": "http://e"}}]'
    )
    assert parse_adapters(json_text) == want
    assert parse_adapters("") == []
    assert parse_adapters("adapters: []") == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- name: a\n  source: [x", "not valid YAML"),
        ("name: a", "expected a list"),
        ("- just-a-string", "expected a mapping"),
        ("- {name: a/b, source: pvc://a}", "path separator"),
        ("- {name: a}", "source must be"),
        ("- {name: a, source: pvc://a, config: 3}", "config must be"),
        ("- {name: a, source: pvc://a, extra: 1}", "unknown key"),
        ("- {name: a, source: pvc://a}\n- {name: a, source: pvc://b}", "listed twice"),
    ],
)
def test_parse_adapters_rejects_bad_files(text: str, problem: str) -> None:
    with pytest.raises(AdaptersFileError, match=problem):
        parse_adapters(text)


def test_volume_sources_are_confined(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    (root / "in").symlink_to(root / "a")
    assert resolve_on_volume(root, "pvc://a") == root / "a"
    assert resolve_on_volume(root, str(root / "a")) == root / "a"
    assert resolve_on_volume(root, "pvc://in") == root / "a"  # a symlink that stays inside is fine
    for bad in ("pvc://../outside", str(tmp_path / "outside"), "pvc://out", "pvc://a/../../outside", "/etc"):
        with pytest.raises(SourceAccessDenied):
            resolve_on_volume(root, bad)
    with pytest.raises(SourceNotFound):
        resolve_on_volume(root, "pvc://missing")
    with pytest.raises(InvalidSource):
        resolve_on_volume(root, "pvc://")


class _Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.release = trio.Event()
        self.fail = False

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise SourceNotFound("gone")
        return dest


async def test_shared_fetches_share_results_and_errors() -> None:
    inner = _Counting()
    shared = SharedFetches(inner)
    results: list[object] = []

    async def one(name: str) -> None:
        try:
            results.append(await shared.fetch(name, "s3://b/x", None, Path("/d")))
        except SourceNotFound as exc:
            results.append(exc.message)

    async with trio.open_nursery() as n:
        for name in ("a", "b", "c"):
            n.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
        inner.release.set()
    assert results == [Path("/d")] * 3
    assert inner.calls == 1

    inner.release = trio.Event()
    inner.fail = True
    results.clear()
    async with trio.open_nursery() as n:
        for name in ("a", "b"):
            n.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
        inner.release.set()
    assert results == ["gone", "gone"]
    assert inner.calls == 2


def test_adapter_settings_from_flags_and_env() -> None:
    from outrider.cli import build_parser, serve_settings
    from outrider.settings import SettingsError

    args = build_parser().parse_args(["serve", "-E", "vllm", "--adapters-file", "/etc/outrider/adapters.yaml"])
    env = {"OUTRIDER_ADAPTER_ROOT": "/mnt/adapters/", "OUTRIDER_ADAPTER_SYNC_INTERVAL": "2.5"}
    settings = serve_settings(args, env)
    assert settings.adapters_file == "/etc/outrider/adapters.yaml"
    assert settings.adapter_root == "/mnt/adapters"
    assert settings.adapter_sync_interval == 2.5
    defaults = serve_settings(build_parser().parse_args(["serve", "-E", "sglang"]), {})
    assert (defaults.adapters_file, defaults.adapter_root, defaults.adapter_sync_interval) == (None, "/adapters", 5.0)
    for bad in ({"OUTRIDER_ADAPTER_ROOT": "relative/dir"}, {"OUTRIDER_ADAPTER_SYNC_INTERVAL": "0"}):
        with pytest.raises(SettingsError):
            serve_settings(build_parser().parse_args(["serve", "-E", "vllm"]), bad)
