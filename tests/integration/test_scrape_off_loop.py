"""The page rewrite of a large engine page runs off the event loop: /health and every other task keep their turn.

Against a real engine socket (the stand-in serving the vLLM fixture grown to a few MB by one more family), the
scrape is timed from inside: how long the rewrite itself takes, and the longest the event loop went without running
a ticking task meanwhile. No wall-clock limit is asserted, only the ratio of the two."""

from __future__ import annotations

import time

import httpx
import trio

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import profile_targets
from outrider.metrics.own import OwnMetrics
from outrider.metrics.scraper import Scraper
from outrider.metrics.standardize import Rewriter
from tests.fakes.engine import FakeEngine

SERIES = 250_000  # about 15 MB of page, rewritten into three profiles: a few hundred ms of CPU


def big_page(base: str) -> str:
    """`base` with SERIES more series of a family every profile renames (one per data-parallel engine index)."""
    family = 'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0\n'
    assert family in base
    more = "".join(f'vllm:num_requests_running{{engine="{i}",model_name="tiny"}} {i}.0\n' for i in range(1, SERIES))
    return base.replace(family, family + more, 1)


async def test_a_large_page_is_rewritten_without_holding_the_event_loop(
    nursery: trio.Nursery, engine_pages: dict[str, str]
) -> None:
    page = big_page(engine_pages["vllm-0.34.0.prom"])
    engine = FakeEngine(page)
    await engine.start(nursery)
    rewriter = Rewriter(
        get_engine_spec("vllm").metric_sources, profile_targets(("outrider", "kthena", "aibrix"), "outrider")
    )
    started = time.perf_counter()
    rewriter.rewrite_page(page)  # the same work once, on this thread: what a scrape must not make the loop wait
    rewrite_seconds = time.perf_counter() - started
    scraper = Scraper(
        url=f"{engine.base_url}/metrics", interval=60.0, timeout=30.0, max_age=120.0, rewriter=rewriter,
        metrics=OwnMetrics("vllm"),
    )  # fmt: skip
    longest = 0.0
    done = trio.Event()

    async def tick() -> None:
        nonlocal longest
        while not done.is_set():
            before = time.perf_counter()
            await trio.sleep(0.002)  # a turn every 2 ms, as the tasks of requests take theirs: how late is it?
            longest = max(longest, time.perf_counter() - before - 0.002)

    async with httpx.AsyncClient() as client, trio.open_nursery() as ticking:
        ticking.start_soon(tick)
        await scraper.scrape_once(client)
        done.set()
    assert scraper.last_error is None and scraper.snapshot is not None
    assert longest < rewrite_seconds / 2, (longest, rewrite_seconds)
