"""The `gie` profile beside a real vLLM (CPU): every protocol family once, a gauge with one series, equal to the
engine's own; with the tiny LoRA loaded and in use `running_lora_adapters` lists it, and after the unload it does not.

outrider runs in this process (`outrider.service.serve` with Settings built directly): the command line learns the
`gie` profile from `outrider.metrics.concepts.PROFILES` once settings does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from outrider.metrics.gie import CACHE_CONFIG, KV_USAGE, LORA_INFO, QUEUED, RUNNING
from outrider.service import serve
from outrider.settings import Settings
from outrider.transfer.settings import DownloadSettings
from tests.e2e.engine import VllmProcess, build_adapter

ADAPTER = "tiny-gie-lora"
Series = tuple[dict[str, str], float]


def protocol_series(page: str, family: str) -> list[Series]:
    """The family's series; fails unless it is declared once and typed gauge (what the picker can read)."""
    assert page.count(f"# TYPE {family} ") == 1, family
    (fam,) = [f for f in text_string_to_metric_families(page) if f.name == family]
    assert fam.type == "gauge", family
    return [(dict(s.labels), s.value) for s in fam.samples]


def the_one(page: str, family: str) -> Series:
    (one,) = protocol_series(page, family)
    return one


def engines_own(page: str, family: str) -> list[Series]:
    """What the picker should read of the engine's family: its one series, or for LoRA the newest (vLLM keeps a
    series per adapter set it ever stamped; outrider serves the newest as it is while no other was stamped within
    a second of it, as when the engine is idle); nothing before vLLM stamped any (it declares the family at start)."""
    found = protocol_series(page, family)
    if family == LORA_INFO:
        return [max(found, key=lambda s: s[1])] if found else []
    assert len(found) == 1, family  # one engine: one series
    return found


async def wait_for(
    check: Callable[[], Awaitable[bool]], within: float, what: str, seen: Callable[[], str] = lambda: ""
) -> None:
    """Poll the async `check()` until true (the state is in other processes; there is no event to wait on).
    `seen` says what the last check saw, for the failure message."""
    with trio.move_on_after(within):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}; last seen: {seen()}")


async def test_protocol_families_equal_the_engines_and_follow_the_lora(
    vllm: VllmProcess, vllm_python: str, tiny_model: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    build_adapter(vllm_python, tiny_model, volume / ADAPTER, seed=5)
    settings = Settings(
        engine="vllm",
        engine_base_url=vllm.base_url,
        host="127.0.0.1",
        port=0,
        pod="e2e",
        scrape_interval=0.1,
        metrics_max_age=2.0,
        metrics_profiles=("outrider", "gie"),
        adapter_root=str(volume),
        adapter_sync_interval=1.0,
        downloads=DownloadSettings(pvc_root=str(volume)),
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=120) as client:
        _, binds = await nursery.start(serve, settings, shutdown)
        url = binds[0]

        async def pages() -> tuple[str, str]:
            served = (await client.get(f"{url}/metrics")).text
            return served, (await client.get(f"{vllm.base_url}/metrics")).text

        last: dict[str, object] = {}

        async def idle_and_equal() -> bool:
            served, engine = await pages()
            families = [QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO]
            last["served"] = {f: protocol_series(served, f) for f in families if f"# TYPE {f} " in served}
            last["engine"] = {f: engines_own(engine, f) for f in families}
            if f"# TYPE {RUNNING} " not in served:
                return False  # not scraped yet
            return all(protocol_series(served, f) == engines_own(engine, f) for f in families)

        await wait_for(idle_and_equal, 15, "the protocol families equal to the engine's", lambda: repr(last))

        response = await client.put(f"{url}/v1/adapters/{ADAPTER}", json={"source": f"pvc://{ADAPTER}", "wait": True})
        assert response.status_code == 200, response.text

        async def lora_running() -> str:
            served, _ = await pages()
            found = protocol_series(served, LORA_INFO)
            last["lora"] = found
            assert len(found) <= 1
            return found[0][0]["running_lora_adapters"] if found else ""  # none stamped yet

        # vLLM lists an adapter as running while a request uses it: keep one in flight until outrider shows it.
        async def keep_busy(cancel: trio.CancelScope) -> None:
            with cancel:
                async with httpx.AsyncClient(timeout=120) as own:
                    while True:
                        r = await own.post(
                            f"{vllm.base_url}/v1/completions",
                            json={"model": ADAPTER, "prompt": "hello", "max_tokens": 200, "ignore_eos": True},
                        )
                        assert r.status_code == 200, r.text

        async def listed() -> bool:
            return ADAPTER in (await lora_running()).split(",")

        busy = trio.CancelScope()
        nursery.start_soon(keep_busy, busy)
        await wait_for(listed, 60, f"{ADAPTER} in running_lora_adapters", lambda: repr(last))
        busy.cancel()

        response = await client.delete(f"{url}/v1/adapters/{ADAPTER}", params={"wait": "true"})
        assert response.status_code == 200, response.text

        # vLLM stamps its LoRA series on an engine step only, and outrider lists what was stamped within
        # LORA_WINDOW (1 s) of the newest series: the adapter leaves the list once base-model traffic has run for
        # that long after its last step. Each check sends one such request, as real traffic would.
        async def gone() -> bool:
            r = await client.post(
                f"{vllm.base_url}/v1/completions", json={"model": vllm.served_name, "prompt": "hello", "max_tokens": 2}
            )
            assert r.status_code == 200, r.text
            return ADAPTER not in (await lora_running()).split(",")

        await wait_for(gone, 30, f"{ADAPTER} gone from running_lora_adapters", lambda: repr(last))
        await wait_for(
            idle_and_equal, 15, "the protocol families equal to the engine's after the unload", lambda: repr(last)
        )
        served, _ = await pages()
        assert the_one(served, LORA_INFO)[0]["max_lora"] == "4"  # the engine's --max-loras
        shutdown.set()
