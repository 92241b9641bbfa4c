"""Adapter names, the adapters file format, and volume confinement."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from outrider.adapters.fetch import Fetched, SharedFetches, place_on_volume
from outrider.adapters.file import AdaptersFileError, parse_adapters
from outrider.adapters.names import directory_name, display_source, validate_name
from outrider.adapters.reconciler import Declaration
from outrider.errors import InvalidRequest, InvalidSource, SourceAccessDenied, SourceNotFound


@pytest.mark.parametrize(
    "name", ["a", "sql-lora", "A_1.v2", "_x", "x" * 128, "team/sql", "sql:v2", "a b", "..", ".hidden", "a\\b", "é"]
)
def test_any_name_the_engine_takes_is_valid(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "  ", "x" * 129, "a\x00", "a\nb", "a\x7f", 3, None])
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_name(name)
    assert info.value.field == "lora_name"


def test_directory_names_are_safe_and_one_to_one() -> None:
    names = ["sql", "team/sql", "team%2Fsql", "sql:v2", ".", "..", ".hidden", "%2Ehidden", "a\\b", "x" * 128, "é" * 128]
    dirs = [directory_name(n) for n in names]
    assert dirs[0] == "sql" and dirs[1] == "team%2Fsql" and dirs[2] != dirs[1]
    assert len(set(dirs)) == len(names)
    for d in dirs:
        assert "/" not in d and "\\" not in d and not d.startswith(".") and len(d.encode()) <= 255


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
        ('- {name: "a\\x01", source: pvc://a}', "control characters"),
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

    def place(source: str) -> Path | None:
        return place_on_volume(source, adapter_root=root, pvc_root=str(root))

    assert place("pvc://a") == root / "a"
    assert place(str(root / "a")) == root / "a"
    assert place("pvc://in") == root / "a"  # a symlink that stays inside is fine
    for bad in ("pvc://out", str(tmp_path / "outside"), "/etc"):
        with pytest.raises(SourceAccessDenied):
            place(bad)
    with pytest.raises(SourceNotFound):
        place("pvc://missing")
    # `..` is refused by its words, as on the download routes (the same source means the same on every route).
    for invalid in ("pvc://", "pvc://../outside", "pvc://a/../../outside", str(root / "a" / ".." / ".." / "outside")):
        with pytest.raises(InvalidSource):
            place(invalid)


def test_pvc_means_under_the_pvc_root_on_every_route(tmp_path: Path) -> None:
    """pvc://x is <--pvc-root>/x, as for downloads: in place when the engine can read it (under the adapter
    root), else None (to be copied); refused while no --pvc-root is set."""
    adapters, pvc = tmp_path / "adapters", tmp_path / "pvc"
    (pvc / "lora-a").mkdir(parents=True)
    (adapters / "shared" / "lora-b").mkdir(parents=True)
    assert place_on_volume("pvc://lora-a", adapter_root=adapters, pvc_root=str(pvc)) is None
    assert place_on_volume(str(pvc / "lora-a"), adapter_root=adapters, pvc_root=str(pvc)) is None
    # The pvc root may be the adapter volume itself, or hold it: then pvc:// sources load in place.
    assert place_on_volume("pvc://shared/lora-b", adapter_root=adapters, pvc_root=str(adapters)) == (
        adapters / "shared" / "lora-b"
    )
    assert place_on_volume("pvc://adapters/shared/lora-b", adapter_root=adapters, pvc_root=str(tmp_path)) == (
        adapters / "shared" / "lora-b"
    )
    with pytest.raises(SourceNotFound):  # not under the adapter root: pvc:// never means that any more
        place_on_volume("pvc://shared/lora-b", adapter_root=adapters, pvc_root=str(pvc))
    with pytest.raises(SourceAccessDenied, match="no --pvc-root"):
        place_on_volume("pvc://lora-a", adapter_root=adapters, pvc_root=None)
    # An absolute path under the adapter root needs no pvc root; one elsewhere does.
    assert place_on_volume(str(adapters / "shared" / "lora-b"), adapter_root=adapters, pvc_root=None) == (
        adapters / "shared" / "lora-b"
    )
    with pytest.raises(SourceAccessDenied):
        place_on_volume(str(pvc / "lora-a"), adapter_root=adapters, pvc_root=None)


class _Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.release = trio.Event()
        self.fail = False
        self.cancel_group = False

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise SourceNotFound("gone")
        if self.cancel_group:
            raise BaseExceptionGroup("owner cancelled", [trio.Cancelled._create()])
        return Fetched(dest, downloaded=True)


async def test_shared_fetches_share_results_and_errors() -> None:
    inner = _Counting()
    shared = SharedFetches(inner)
    results: list[object] = []
    errors: list[SourceNotFound] = []

    async def one(name: str) -> None:
        try:
            results.append(await shared.fetch(name, "s3://b/x", None, Path("/d")))
        except SourceNotFound as exc:
            results.append(exc.message)
            errors.append(exc)

    async with trio.open_nursery() as n:
        for name in ("a", "b", "c"):
            n.start_soon(one, name)
        await trio.testing.wait_all_tasks_blocked()
        inner.release.set()
    assert results == [Fetched(Path("/d"), downloaded=True)] * 3
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
    # Each task raised an error of its own: one object raised in two tasks would carry both tracebacks.
    assert errors[0] is not errors[1]
    assert errors[0].field == errors[1].field and type(errors[0]) is type(errors[1])


async def test_a_joiner_of_a_fetch_that_ended_cancelled_starts_its_own() -> None:
    """A Cancelled wrapped in a group (as a nursery raises it) is not an outcome to hand on: the joiner fetches."""
    inner = _Counting()
    inner.cancel_group = True
    shared = SharedFetches(inner)
    outcomes: list[object] = []

    async def owner() -> None:
        try:
            await shared.fetch("a", "s3://b/x", None, Path("/d"))
        except BaseExceptionGroup as group:
            outcomes.append(type(group))
            inner.cancel_group = False  # runs before the joiner wakes: its own fetch then succeeds

    async def joiner() -> None:
        outcomes.append(await shared.fetch("b", "s3://b/x", None, Path("/d")))

    async with trio.open_nursery() as n:
        n.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(joiner)
        await trio.testing.wait_all_tasks_blocked()
        inner.release.set()
    assert outcomes[0] is BaseExceptionGroup
    assert outcomes[1:] == [Fetched(Path("/d"), downloaded=True)]
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
