"""How the scrape loop reports a failure it did not expect (a bug in the page rewrite), against a real engine socket."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio
import trio.testing

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import profile_targets
from outrider.metrics.own import OwnMetrics
from outrider.metrics.scraper import FAILURE_LOG_INTERVAL, Scraper
from outrider.metrics.standardize import Rewriter, RewrittenPage
from tests.fakes.engine import FakeEngine


class FaultyRewriter(Rewriter):
    """The real rewriter with a fault injected: every page raises, each time with another message."""

    calls = 0

    def rewrite_page(self, page: str) -> RewrittenPage:
        self.calls += 1
        raise ZeroDivisionError(f"fault number {self.calls} on a page of {len(page)} characters")


async def test_an_unexpected_failure_logs_its_traceback_at_most_once_per_interval(
    nursery: trio.Nursery,
    engine_pages: dict[str, str],
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The clock stands still unless the test moves it, so "within one interval" is exact, with no waiting.
    engine = FakeEngine(engine_pages["vllm-0.34.0.prom"])
    await engine.start(nursery)
    spec = get_engine_spec("vllm")
    rewriter = FaultyRewriter(spec.metric_sources, profile_targets(("outrider",), "outrider"))
    scraper = Scraper(
        url=f"{engine.base_url}/metrics", interval=1.0, timeout=5.0, max_age=10.0, rewriter=rewriter,
        metrics=OwnMetrics("vllm"),
    )  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="outrider")

    def tracebacks() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.exc_info is not None]

    async with httpx.AsyncClient() as client:
        for _ in range(5):
            await scraper.scrape_once(client)
        assert rewriter.calls == 5 and engine.metrics_requests == 5
        assert scraper.last_error is not None and scraper.last_error.reason == "protocol"
        (logged,) = tracebacks()
        assert logged.levelno == logging.ERROR and logged.exc_info is not None
        assert logged.exc_info[0] is ZeroDivisionError

        mock_clock.jump(FAILURE_LOG_INTERVAL + 1)
        await scraper.scrape_once(client)
        assert len(tracebacks()) == 2, "once the interval has passed the failure is reported again"
