"""The Grafana dashboard and the Prometheus recording rules read only metrics that outrider really serves.

"Really serves" means: a real outrider (in-process, on a loopback socket) scraping a stand-in engine that serves a
real engine page from the fixtures, and the names taken from its `GET /metrics` answer. Checked for vLLM and SGLang,
with outrider's default metrics profile (the one the manifests run).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.conftest import REPO
from tests.fakes.engine import FakeEngine
from tests.integration.conftest import fast_settings, start_outrider, wait_until
from tests.promql_names import grafana_query_names, metric_names

DASHBOARD = REPO / "deploy" / "grafana" / "outrider.json"
RULES = REPO / "deploy" / "prometheus" / "outrider-rules.yml"

ENGINE_PAGES = {"vllm": "vllm-0.32.0-cpu.prom", "sglang": "sglang-0.5.23.prom"}

# PENDING: names a dashboard panel may use before the feature serving them lands (reported, not failed).
PENDING_NAMES: dict[str, str] = {}

# Unified names an engine version does not feed, so the panel is empty for it (checked below to still be true).
ENGINE_GAPS: dict[str, set[str]] = {
    # SGLang 0.5.23 serves no sglang:num_retracted_requests_total in the fixture page, so no preemption counter.
    "sglang": {"outrider:num_preemptions_total"},
    "vllm": set(),
}

_SAMPLE_NAME = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)")


def page_sample_names(page: str) -> set[str]:
    """Every sample name on an exposition page (histograms as their _bucket/_sum/_count series)."""
    names = set()
    for line in page.splitlines():
        if line and not line.startswith("#"):
            m = _SAMPLE_NAME.match(line)
            if m:
                names.add(m.group(1))
    return names


async def served_names(nursery: trio.Nursery, engine_name: str, page: str) -> set[str]:
    """Start a stand-in engine and a real outrider; return the sample names outrider's /metrics serves."""
    engine = FakeEngine(page)
    await engine.start(nursery)
    settings = dataclasses.replace(fast_settings(engine), engine=engine_name, metrics_profiles=("outrider",))
    running = await start_outrider(nursery, settings)
    async with running.client as client:

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await wait_until(ready, what="outrider ready against the stand-in engine")
        answer = await client.get("/metrics")
        assert answer.status_code == 200
    running.shutdown.set()
    engine.stop()
    names = page_sample_names(answer.text)
    # The page really is outrider's: the engine's originals plus unified and own names.
    assert "outrider:num_requests_running" in names and "outrider_engine_up" in names
    return names


@dataclasses.dataclass(frozen=True)
class Query:
    where: str
    expr: str
    grafana_variable: bool = False

    def names(self) -> set[str]:
        return grafana_query_names(self.expr) if self.grafana_variable else metric_names(self.expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append(Query(f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            queries.append(Query(f"variable ${var['name']}", q, grafana_variable=True))
    return queries


def rule_queries(rules: dict[str, Any]) -> list[Query]:
    return [
        Query(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def unknown_names(queries: list[Query], allowed: set[str]) -> dict[str, list[str]]:
    """Each name that no allowed set covers, with where it appears."""
    unknown: dict[str, list[str]] = {}
    for q in queries:
        for name in q.names() - allowed:
            unknown.setdefault(name, []).append(q.where)
    return unknown


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def report_pending(used: set[str], served: set[str]) -> None:
    pending = sorted(n for n in PENDING_NAMES if n in used and n not in served)
    if pending:
        warnings.warn(f"dashboard uses pending names outrider does not serve yet: {pending}", stacklevel=2)
    landed = sorted(n for n in PENDING_NAMES if n in served)
    if landed:
        warnings.warn(f"pending names now served, drop them from PENDING_NAMES: {landed}", stacklevel=2)


@pytest.mark.parametrize("engine_name", sorted(ENGINE_PAGES))
async def test_dashboard_reads_only_served_metrics(
    nursery: trio.Nursery, engine_pages: dict[str, str], engine_name: str
) -> None:
    served = await served_names(nursery, engine_name, engine_pages[ENGINE_PAGES[engine_name]])
    queries = dashboard_queries(load_dashboard())
    assert len(queries) > 20  # the walk found the panels (a silent empty walk would pass anything)
    gaps = ENGINE_GAPS[engine_name]
    assert gaps.isdisjoint(served), f"{engine_name} now serves {gaps & served}: drop them from ENGINE_GAPS"
    unknown = unknown_names(queries, served | set(PENDING_NAMES) | gaps)
    assert unknown == {}, f"dashboard names metrics outrider does not serve for {engine_name}: {unknown}"
    used = set().union(*(q.names() for q in queries))
    report_pending(used, served)


@pytest.mark.parametrize("engine_name", sorted(ENGINE_PAGES))
async def test_recording_rules_read_only_served_metrics(
    nursery: trio.Nursery, engine_pages: dict[str, str], engine_name: str
) -> None:
    served = await served_names(nursery, engine_name, engine_pages[ENGINE_PAGES[engine_name]])
    queries = rule_queries(load_rules())
    assert len(queries) >= 9
    # No pending names here: the rules must work on what outrider serves today.
    assert unknown_names(queries, served) == {}


async def test_a_bogus_name_in_the_dashboard_is_caught(nursery: trio.Nursery, engine_pages: dict[str, str]) -> None:
    served = await served_names(nursery, "vllm", engine_pages[ENGINE_PAGES["vllm"]])
    dashboard = load_dashboard()
    panel = next(p for p in _panels(dashboard["panels"]) if p.get("targets"))
    panel["targets"].append(
        {"refId": "Z", "expr": 'sum(rate(outrider:bogus_tokens_total{pod=~"$pod"}[$__rate_interval])) by (pod)'}
    )
    dashboard["templating"]["list"].append(
        {"name": "bogus", "type": "query", "query": {"query": "label_values(outrider_no_such_info, pod)"}}
    )
    unknown = unknown_names(dashboard_queries(dashboard), served | set(PENDING_NAMES))
    assert set(unknown) == {"outrider:bogus_tokens_total", "outrider_no_such_info"}


def test_dashboard_is_well_formed_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            # Every $variable a query uses is defined (Grafana's own $__ variables aside).
            for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: ${var} is not defined"
    # The list of panels is all there.
    titles = " ".join(p["title"].lower() for p in panels)
    for needle in (
        "running",
        "kv cache",
        "token throughput",
        "first token",
        "inter-token",
        "end-to-end",
        "engine up",
        "page age",
        "download",
        "adapters",
    ):
        assert needle in titles, needle


def test_pending_names_are_not_already_unified_or_engine_names() -> None:
    # A pending name must be one of outrider's own (outrider_*), never a rename of an engine metric.
    assert all(name.startswith("outrider_") for name in PENDING_NAMES)


def test_page_sample_names_reads_histogram_series() -> None:
    page = '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\nc_total{a="x y"} 2\n'
    assert page_sample_names(page) == {"h_bucket", "h_sum", "h_count", "c_total"}


def test_rules_file_is_where_the_scrape_config_says(tmp_path: Path) -> None:
    config = yaml.safe_load((RULES.parent / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
