"""The reconciler driven directly, with a fetcher the test controls, against a stand-in vLLM over a real socket."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import trio
import trio.testing

from outrider.adapters.fetch import Fetched, SharedFetches, VolumeFetcher
from outrider.adapters.reconciler import Reconciler
from outrider.engines.client import EngineClient
from outrider.engines.vllm import VLLM
from outrider.errors import SourceNotFound
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import wait_until
from tests.integration.lora_fixtures import root, vllm

__all__ = ["root", "vllm"]


class SteeredFetcher:
    """Volume fetches, counted; fetches of names in `held` wait until released; a remote stand-in for others."""

    def __init__(self, root: Path) -> None:
        self.volume = VolumeFetcher(root, remote=self.remote, pvc_root=str(root))
        self.held: set[str] = set()
        self.release = trio.Event()
        self.fetches: list[str] = []
        self.remote_calls: list[tuple[str, Path]] = []

    async def remote(self, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        self.remote_calls.append((source, dest))
        return dest.parent / source.rsplit("/", 1)[1]  # pretend it downloaded into an existing adapter dir

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        self.fetches.append(name)
        if name in self.held:
            await self.release.wait()
        return await self.volume.fetch(name, source, config, dest)


def make_reconciler(engine: FakeLoraEngine, fetcher: object, root: Path) -> Reconciler:
    return Reconciler(
        EngineClient(engine.base_url, None),
        VLLM.lora,
        fetcher,  # type: ignore[arg-type]
        adapter_root=root,
        interval=0.2,
    )


async def test_a_slow_fetch_does_not_hold_up_other_adapters(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    fetcher = SteeredFetcher(root)
    fetcher.held.add("slow")
    r = make_reconciler(vllm, fetcher, root)
    await nursery.start(r.run)
    r.declare("slow", "pvc://a")
    r.declare("b", "pvc://b")
    r.declare("c", "pvc://c")

    async def others_loaded() -> bool:
        return set(vllm.loaded) == {"b", "c"}

    await wait_until(others_loaded, within=5, what="b and c loaded while slow is still fetching")
    slow = r.get("slow")
    assert slow is not None and slow.state == "downloading"
    fetcher.release.set()

    async def all_loaded() -> bool:
        return set(vllm.loaded) == {"slow", "b", "c"}

    await wait_until(all_loaded, within=5, what="slow loaded once released")
    assert fetcher.fetches.count("slow") == 1  # the passes meanwhile did not start a second fetch


async def test_concurrent_loads_share_one_fetch_and_one_engine_call(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    fetcher = SteeredFetcher(root)
    fetcher.held.add("a")
    r = make_reconciler(vllm, fetcher, root)
    await nursery.start(r.run)
    done: list[str] = []

    async def load() -> None:
        rec = await r.load("a", "pvc://a")
        done.append(str(rec.state))

    async with trio.open_nursery() as callers:
        for _ in range(5):
            callers.start_soon(load)
        await trio.testing.wait_all_tasks_blocked()
        fetcher.release.set()
    assert done == ["loaded"] * 5
    assert fetcher.fetches == ["a"]
    assert len(vllm.load_calls("a")) == 1


async def test_retracting_during_a_fetch_cancels_it_and_loads_nothing(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    fetcher = SteeredFetcher(root)
    fetcher.held.add("a")
    r = make_reconciler(vllm, fetcher, root)
    await nursery.start(r.run)
    r.declare("a", "pvc://a")

    async def fetching() -> bool:
        rec = r.get("a")
        return rec is not None and rec.state == "downloading"

    await wait_until(fetching, within=5, what="a downloading")
    ticket = r.retract("a")
    with trio.fail_after(5):
        await r.wait_gone(ticket)
    assert r.get("a") is None
    assert vllm.load_calls() == []


async def test_redeclaring_with_a_new_source_replaces_the_loaded_adapter(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    r = make_reconciler(vllm, SharedFetches(VolumeFetcher(root, pvc_root=str(root))), root)
    await nursery.start(r.run)
    with trio.fail_after(5):
        await r.wait_loaded(r.declare("x", "pvc://a"))
        assert vllm.loaded == {"x": str(root / "a")}
        await r.wait_loaded(r.declare("x", "pvc://b"))
    assert vllm.loaded == {"x": str(root / "b")}
    assert [c.name for c in vllm.unload_calls()] == ["x"]


async def test_remote_sources_go_to_the_injected_download(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    fetcher = SteeredFetcher(root)
    r = make_reconciler(vllm, fetcher, root)
    await nursery.start(r.run)
    with trio.fail_after(5):
        await r.wait_loaded(r.declare("remote-one", "s3://bucket/prefix/c", {"endpoint": "http://s3"}))
    assert fetcher.remote_calls == [("s3://bucket/prefix/c", root / "remote-one")]
    assert vllm.loaded == {"remote-one": str(root / "c")}


async def test_adopts_what_it_loaded_before_a_sidecar_restart(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    vllm.loaded["a"] = str(root / "a")  # loaded by an earlier outrider from the same path
    r = make_reconciler(vllm, SharedFetches(VolumeFetcher(root, pvc_root=str(root))), root)
    await nursery.start(r.run)
    with trio.fail_after(5):
        await r.wait_loaded(r.declare("a", "pvc://a"))
        assert vllm.load_calls() == []
        await r.wait_gone(r.retract("a"))  # adopted, so outrider may unload it
    assert vllm.loaded == {}


class FailingFetcher:
    """Every fetch fails as a store that has no such source does."""

    async def fetch(self, name: str, source: str, config: Mapping[str, object] | None, dest: Path) -> Fetched:
        raise SourceNotFound(f"{source}: no objects under this prefix", field="source")


async def test_every_waiter_of_a_failed_attempt_gets_an_error_of_its_own(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    r = make_reconciler(vllm, FailingFetcher(), root)
    ticket = r.declare("x", "s3://bucket/x")
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await r.wait_loaded(ticket)
        except SourceNotFound as exc:
            errors.append(exc)

    async with trio.open_nursery() as waiters:
        waiters.start_soon(wait)
        waiters.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(r.run)
    rec = r.get("x")
    assert rec is not None and isinstance(rec.error, SourceNotFound)
    assert len(errors) == 2 and errors[0] is not errors[1] and all(e is not rec.error for e in errors)
