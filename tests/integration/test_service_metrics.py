"""outrider against a stand-in engine over real sockets: serving, slow, down, and back."""

from __future__ import annotations

import logging
import math

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider, wait_until

Checker = httpx.AsyncClient
# Longer than any test runs: a page that does not go stale, a scrape that does not come round again.
HOUR = 3600.0


def value(page: str, sample: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def is_ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


async def test_serves_engine_page_with_unified_names(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    # A page that cannot go stale between /ready and /metrics, however slow the machine: staleness is tested below.
    o = await start_outrider(nursery, fast_settings(vllm_engine, metrics_max_age=HOUR))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    response = await o.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = response.text
    assert body.startswith(vllm_engine.page)
    assert value(body, "outrider:prompt_tokens_total") == value(vllm_engine.page, "vllm:prompt_tokens_total")
    assert value(body, "kthena:generation_tokens_total") == value(body, "vllm:generation_tokens_total")
    assert value(body, "outrider_engine_up") == 1.0
    assert value(body, "outrider_engine_page_served") == 1.0
    age = value(body, "outrider_engine_page_age_seconds")
    assert age is not None and 0 <= age < HOUR  # an age, not the -1 of "no page yet"
    assert value(body, "outrider_build_info", engine="vllm") == 1.0
    o.shutdown.set()


async def test_metrics_never_waits_on_the_engine(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    # One scrape at start, the next an hour later: any engine call during the requests is one a request made.
    o = await start_outrider(nursery, fast_settings(vllm_engine, scrape_interval=HOUR, metrics_max_age=HOUR))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    served_before = vllm_engine.metrics_requests
    for _ in range(20):
        assert (await o.client.get("/metrics")).status_code == 200
    assert vllm_engine.metrics_requests == served_before  # a request-path scrape would have made 20 engine calls
    o.shutdown.set()


async def test_slow_engine_goes_stale(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    vllm_engine.delay = 1.0  # longer than the 0.3 s scrape timeout

    async def stale() -> bool:
        return (await o.client.get("/ready")).status_code == 503

    await wait_until(stale, what="/ready 503 once the page is older than its 0.5 s limit")
    ready = (await o.client.get("/ready")).json()
    assert ready["status"] == "not ready" and "stale" in ready["reason"]
    body = (await o.client.get("/metrics")).text
    assert "vllm:" not in body and "outrider:" not in body  # stale engine series are dropped, not served
    assert value(body, "outrider_engine_page_served") == 0.0
    timeouts = value(body, "outrider_scrape_failures_total", reason="timeout")
    assert timeouts is not None and timeouts >= 1
    assert (await o.client.get("/health")).json() == {"status": "healthy", "service": "runtime"}
    o.shutdown.set()


async def test_probes_and_metrics_answer_while_the_engine_holds_a_scrape(
    nursery: trio.Nursery, vllm_engine: FakeEngine
) -> None:
    """No request waits on the engine: with a scrape held open by the engine (and a scrape timeout longer than the
    client's), every probe and /metrics still answers, and the page goes stale while the scrape hangs. A request
    that waited on the scrape would hang past the client's 5 s timeout and fail; no elapsed time is measured."""
    o = await start_outrider(nursery, fast_settings(vllm_engine, scrape_timeout=HOUR))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    before = vllm_engine.metrics_requests
    vllm_engine.delay = math.inf  # the engine takes every /metrics request and never answers

    async def scrape_held() -> bool:
        return vllm_engine.metrics_requests > before

    await wait_until(scrape_held, what="a scrape held by the engine")
    held = vllm_engine.metrics_requests

    async def stale() -> bool:
        return (await o.client.get("/ready")).status_code == 503

    await wait_until(stale, what="/ready 503 while the scrape hangs")
    for path in ("/health", "/healthz", "/metrics"):
        response = await o.client.get(path)
        assert response.status_code == 200, path
    assert "stale" in (await o.client.get("/ready")).json()["reason"]
    assert vllm_engine.metrics_requests == held  # still that one scrape: every answer above came while it hung
    o.shutdown.set()


async def test_dead_engine_then_recovery(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")

    vllm_engine.stop()

    async def unreachable() -> bool:
        r = await o.client.get("/ready")
        return r.status_code == 503 and "unreachable" in r.json()["reason"]

    await wait_until(unreachable, what="/ready 503 naming the unreachable engine")
    reason = (await o.client.get("/ready")).json()["reason"]
    assert vllm_engine.base_url in reason

    async def engine_series_gone() -> bool:
        return "vllm:" not in (await o.client.get("/metrics")).text

    await wait_until(engine_series_gone, what="stale series dropped")
    body = (await o.client.get("/metrics")).text
    assert value(body, "outrider_engine_up") == 0.0
    connects = value(body, "outrider_scrape_failures_total", reason="connect")
    assert connects is not None and connects >= 1
    assert (await o.client.get("/health")).status_code == 200  # never waits on the engine: see the test above

    await vllm_engine.start(nursery)  # same port
    await wait_until(lambda: is_ready(o.client), what="/ready 200 after the engine came back")
    body = (await o.client.get("/metrics")).text
    assert value(body, "outrider:prompt_tokens_total") == value(vllm_engine.page, "vllm:prompt_tokens_total")
    assert value(body, "outrider_engine_up") == 1.0
    o.shutdown.set()


async def test_engine_error_status_is_counted(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    vllm_engine.status = 500

    async def counted() -> bool:
        v = value((await o.client.get("/metrics")).text, "outrider_scrape_failures_total", reason="http_status")
        return v is not None and v >= 1

    await wait_until(counted, what="http_status failure counted")
    o.shutdown.set()


async def test_not_ready_before_first_scrape_and_model_discovered(
    nursery: trio.Nursery, vllm_engine: FakeEngine
) -> None:
    vllm_engine.stop()
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    response = await o.client.get("/ready")
    assert response.status_code == 503
    body = (await o.client.get("/metrics")).text
    assert value(body, "outrider_engine_page_age_seconds") == -1.0
    await vllm_engine.start(nursery)
    await wait_until(lambda: is_ready(o.client), what="/ready 200")

    async def model_known() -> bool:
        model: object = (await o.client.get("/ready")).json().get("model")
        return model == "tiny"

    await wait_until(model_known, what="model discovered from /v1/models")
    o.shutdown.set()


async def test_api_key_goes_to_the_engine_and_nowhere_else(
    nursery: trio.Nursery, vllm_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-outrider-test-secret-1234"
    o = await start_outrider(nursery, fast_settings(vllm_engine, engine_api_key=secret))
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    assert vllm_engine.seen_headers and all(
        h.get("authorization") == f"Bearer {secret}" for h in vllm_engine.seen_headers
    )
    vllm_engine.stop()  # failures get logged: the key must not be in those lines either

    async def unreachable() -> bool:
        return (await o.client.get("/ready")).status_code == 503

    await wait_until(unreachable, what="engine seen down")
    everything = [(await o.client.get(p)).text for p in ("/metrics", "/ready", "/health", "/healthz", "/nope")]
    assert all(secret not in text for text in everything)
    assert secret not in caplog.text
    assert secret not in repr(o.runtime.settings)
    o.shutdown.set()


async def test_unknown_route_is_json_404(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine))
    response = await o.client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    response = await o.client.post("/metrics")
    assert response.status_code == 405
    assert "error" in response.json()
    o.shutdown.set()


async def test_metrics_gzip_head_and_methods(nursery: trio.Nursery, vllm_engine: FakeEngine) -> None:
    o = await start_outrider(nursery, fast_settings(vllm_engine, metrics_max_age=HOUR))  # never stale mid-test
    await wait_until(lambda: is_ready(o.client), what="/ready 200")
    async with httpx.AsyncClient(base_url=o.url) as raw:
        # Prometheus sends Accept-Encoding: gzip; the body must be the same page, compressed.
        plain = await raw.get("/metrics", headers={"accept-encoding": "identity"})
        zipped = await raw.get("/metrics", headers={"accept-encoding": "gzip"})
        refused = await raw.get("/metrics", headers={"accept-encoding": "gzip;q=0, identity"})
        head = await raw.head("/metrics", headers={"accept-encoding": "identity"})
        post = await raw.post("/metrics")
        get_ready, head_ready = await raw.get("/ready"), await raw.head("/ready")
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(plain.content) / 3
    assert zipped.text.split("# HELP outrider_")[0] == plain.text.split("# HELP outrider_")[0]  # httpx decodes
    assert "content-encoding" not in refused.headers
    # The page is recomposed every 0.1 s with this test's own request counts in it, so HEAD /metrics is not held
    # to an earlier GET's length here (tests/unit/test_hot_routes.py does that on a stopped clock); /ready's
    # body does not change, so its HEAD is, over the wire.
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > len(vllm_engine.page)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert post.json()["error"]["type"] == "method_not_allowed"
    assert head_ready.status_code == 200 and head_ready.content == b""
    assert int(head_ready.headers["content-length"]) == len(get_ready.content)
    o.shutdown.set()
