"""The `gie` profile end to end inside outrider: Prometheus's own checker on what is served, and the LoRA family
made from outrider's adapter state for SGLang, through a running outrider beside stand-in engines.

Pages: the real engine pages (tests/fixtures/engine-metrics); the SGLang one with LoRA on is derived from the real
0.5.23 page by adding `sglang:lora_pool_slots_total` with the labels and layout of its own scheduler gauges (that
page was made with LoRA off).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import profile_targets
from outrider.metrics.gie import LORA_INFO, PROTOCOL_FAMILIES, AdapterLoraInfo, ProtocolRewrite
from outrider.metrics.own import OwnMetrics
from outrider.metrics.standardize import Rewriter
from tests.conftest import fixtures_dir
from tests.fakes.engine import FakeEngine
from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import fast_settings, start_outrider, wait_until
from tests.integration.lora_fixtures import lora_settings, make_adapter
from tests.integration.test_promtool import promtool

PROFILES = ("outrider", "kthena", "aibrix", "gie")
SLOTS = 4


def with_lora_slots(page: str, slots: int) -> str:
    """The SGLang page as SGLang 0.5.23 serves it with --enable-lora: its LoRA pool gauge beside the others."""
    (running,) = [ln for ln in page.split("\n") if ln.startswith("sglang:num_running_reqs{")]
    labels = running[len("sglang:num_running_reqs") : running.rindex(" ")]
    family = (
        "# HELP sglang:lora_pool_slots_total Total LoRA slots.\n# TYPE sglang:lora_pool_slots_total gauge\n"
        f"sglang:lora_pool_slots_total{labels} {float(slots)}\n"
    )
    return page.replace("# HELP sglang:num_running_reqs ", family + "# HELP sglang:num_running_reqs ", 1)


def served_page(engine: str, page: str, lora: AdapterLoraInfo | None = None) -> tuple[Rewriter, str]:
    spec = get_engine_spec(engine)
    rewriter = Rewriter(spec.metric_sources, profile_targets(PROFILES, "outrider"), ProtocolRewrite.for_engine(spec))
    rewritten = rewriter.rewrite_page(page)
    extra = lora.render(rewritten.max_lora) if lora is not None else ""
    return rewriter, rewritten.text + extra + OwnMetrics(engine).render().decode()


PAGES = sorted(p.name for p in fixtures_dir().glob("*.prom"))


@pytest.mark.parametrize("page_name", [*PAGES, "sglang-0.5.23.prom+lora"])
def test_served_page_with_the_gie_profile_passes_promtool(page_name: str) -> None:
    name, _, variant = page_name.partition("+")
    engine = name.split("-", 1)[0]
    page = (fixtures_dir() / name).read_text()
    lora = None
    if variant:
        page = with_lora_slots(page, SLOTS)
        lora = AdapterLoraInfo(lambda: ["sql-lora", "chat-lora"])
    rewriter, served = served_page(engine, page, lora)

    engine_rc, engine_findings = promtool(page)
    rc, findings = promtool(served)
    assert engine_rc in (0, 3)
    assert rc in (0, 3), findings
    ours = set(rewriter.target_names) | set(PROTOCOL_FAMILIES)
    colon_rule = {f"{n} metric names should not contain ':'" for n in ours}
    new = findings - engine_findings - colon_rule
    assert new == set(), f"promtool findings outrider introduced: {sorted(new)}"
    families = [f.name for f in text_string_to_metric_families(served)]
    assert len(families) == len(set(families))
    if variant:
        (info,) = [f for f in text_string_to_metric_families(served) if f.name == LORA_INFO]
        (sample,) = info.samples
        assert sample.labels == {
            "max_lora": str(SLOTS),
            "running_lora_adapters": "chat-lora,sql-lora",
            "waiting_lora_adapters": "",
        }


class SglangWithMetrics(FakeLoraEngine):
    """The stand-in SGLang LoRA server, also answering /metrics with a real SGLang page."""

    def __init__(self, page: str) -> None:
        super().__init__("sglang")
        self.page = page

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        if method == "GET" and path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.page.encode()
        return await super()._answer(method, path, body)


def lora_series(page: str) -> list[dict[str, str]]:
    return [dict(s.labels) for f in text_string_to_metric_families(page) if f.name == LORA_INFO for s in f.samples]


async def test_sglang_lora_family_follows_what_outrider_loads(
    nursery: trio.Nursery, engine_pages: dict[str, str], tmp_path: Path
) -> None:
    engine = SglangWithMetrics(with_lora_slots(engine_pages["sglang-0.5.23.prom"], SLOTS))
    await engine.start(nursery)
    root = tmp_path / "volume"
    make_adapter(root, "sql-lora")
    settings = dataclasses.replace(
        lora_settings(engine, root), metrics_profiles=("outrider", "gie"), scrape_interval=0.1
    )
    o = await start_outrider(nursery, settings)

    async def listed() -> list[dict[str, str]]:
        response = await o.client.get("/metrics")
        assert response.status_code == 200
        return lora_series(response.text)

    async def running_is(value: str) -> bool:
        got = await listed()
        return len(got) == 1 and got[0]["running_lora_adapters"] == value

    await wait_until(lambda: running_is(""), within=5, what="the LoRA family, empty")
    assert (await listed())[0] == {"max_lora": "4", "running_lora_adapters": "", "waiting_lora_adapters": ""}

    response = await o.client.put("/v1/adapters/sql-lora", json={"source": "pvc://sql-lora", "wait": True})
    assert response.status_code == 200, response.text
    assert engine.loaded == {"sql-lora": str(root / "sql-lora")}
    await wait_until(lambda: running_is("sql-lora"), within=2, what="sql-lora listed as running")
    page = (await o.client.get("/metrics")).text
    assert len(re.findall(rf"^# TYPE {LORA_INFO} ", page, re.M)) == 1

    response = await o.client.delete("/v1/adapters/sql-lora", params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert engine.loaded == {}
    await wait_until(lambda: running_is(""), within=2, what="sql-lora gone from the running list")
    o.shutdown.set()


async def test_vllm_page_through_a_running_outrider_has_one_lora_series(
    nursery: trio.Nursery, engine_pages: dict[str, str]
) -> None:
    # vLLM tells its own LoRA state: outrider serves one series made from it, and adds none of its own. On this real
    # page vLLM stamped the empty set 3.6 ms after the last step of a request to adapter b: b is what ran.
    page = engine_pages["vllm-0.32.0-cpu.prom"]
    engine = FakeEngine(page)
    await engine.start(nursery)
    o = await start_outrider(nursery, fast_settings(engine, metrics_profiles=("outrider", "gie")))

    async def scraped() -> bool:
        return bool(lora_series((await o.client.get("/metrics")).text))

    await wait_until(scraped, within=5, what="the engine page served")
    served = (await o.client.get("/metrics")).text
    newest = max(
        (ln for ln in page.split("\n") if ln.startswith(LORA_INFO + "{")), key=lambda ln: float(ln.rsplit(" ", 1)[1])
    )
    (line,) = [ln for ln in served.split("\n") if ln.startswith(LORA_INFO)]
    series, stamp = line.rsplit(" ", 1)
    assert series == LORA_INFO + '{max_lora="4",running_lora_adapters="b",waiting_lora_adapters="b"}'
    assert float(stamp) == float(newest.rsplit(" ", 1)[1])
    o.shutdown.set()


def overflowing(page: str) -> str:
    """vLLM 0.34's data-parallel page with both engines' queue at 1e308 and their running count at +Inf and -Inf."""
    lines = []
    for line in page.split("\n"):
        if line.startswith("vllm:num_requests_waiting{"):
            line = line.rsplit(" ", 1)[0] + " 1e+308"
        elif line.startswith("vllm:num_requests_running{"):
            line = line.rsplit(" ", 1)[0] + (" +Inf" if 'engine="0"' in line else " -Inf")
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("profiles", [("outrider",), ("outrider", "gie")])
async def test_values_beyond_floats_on_data_parallel_series_keep_the_page_and_the_pod_ready(
    nursery: trio.Nursery, engine_pages: dict[str, str], caplog: pytest.LogCaptureFixture, profiles: tuple[str, ...]
) -> None:
    # With gie the two queues summed overflowed math.fsum: no page, /ready 503 (the pod out of its Service) while
    # the default profile served the same page, and a traceback on every scrape.
    page = overflowing(engine_pages["vllm-0.34.0-dp2.prom"])
    engine = FakeEngine(page)
    await engine.start(nursery)
    o = await start_outrider(nursery, fast_settings(engine, metrics_profiles=profiles))

    async def scraped_twice() -> bool:
        return engine.metrics_requests >= 2 and (await o.client.get("/metrics")).status_code == 200

    await wait_until(scraped_twice, within=5, what="the engine page served")
    assert (await o.client.get("/ready")).status_code == 200
    served = (await o.client.get("/metrics")).text
    queued = [
        s for f in text_string_to_metric_families(served) if f.name == "vllm:num_requests_waiting" for s in f.samples
    ]
    if "gie" in profiles:
        assert [s.value for s in queued] == [float("inf")]
    else:
        assert [s.value for s in queued] == [1e308, 1e308]
    assert [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR] == []
    o.shutdown.set()
