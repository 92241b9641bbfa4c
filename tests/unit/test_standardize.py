"""The rewrite against every real engine page: originals untouched, unified series equal their sources."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import UNIFIED, profile_targets
from outrider.metrics.standardize import Rewriter
from tests.conftest import fixtures_dir

ALL_PROFILES = ("outrider", "kthena", "aibrix")

# vLLM V1 today; 0.10 differs only in its inter-token latency spelling.
VLLM_V1 = {
    "num_requests_running": "vllm:num_requests_running",
    "num_requests_waiting": "vllm:num_requests_waiting",
    "kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "prompt_tokens_total": "vllm:prompt_tokens_total",
    "generation_tokens_total": "vllm:generation_tokens_total",
    "request_success_total": "vllm:request_success_total",
    "num_preemptions_total": "vllm:num_preemptions_total",
    "prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
    "time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
}

# Which unified concepts each real page can feed, and from which engine family. Pinned per version so that a
# mapping lost in a refactor fails here rather than on a dashboard.
EXPECTED: dict[str, dict[str, str]] = {
    "vllm-0.7.x-v0.prom": {
        "num_requests_running": "vllm:num_requests_running",
        "num_requests_waiting": "vllm:num_requests_waiting",
        "kv_cache_usage_perc": "vllm:gpu_cache_usage_perc",
        "prompt_tokens_total": "vllm:prompt_tokens_total",
        "generation_tokens_total": "vllm:generation_tokens_total",
        "request_success_total": "vllm:request_success_total",
        "num_preemptions_total": "vllm:num_preemptions_total",
    },
    "vllm-0.10.x.prom": {**VLLM_V1, "inter_token_latency_seconds": "vllm:time_per_output_token_seconds"},
    "vllm-0.32.0-cpu.prom": VLLM_V1,
    # 0.33 and 0.34 add names (KV offload and connector families, a render-duration histogram), none of these.
    "vllm-0.34.0.prom": VLLM_V1,
    "vllm-0.34.0-dp2.prom": VLLM_V1,
    "sglang-0.4.x.prom": {
        "num_requests_running": "sglang:num_running_reqs",
        "num_requests_waiting": "sglang:num_queue_reqs",
        "kv_cache_usage_perc": "sglang:token_usage",
        "prompt_tokens_total": "sglang:prompt_tokens_total",
        "generation_tokens_total": "sglang:generation_tokens_total",
        "prefix_cache_queries_total": "sglang:prompt_tokens_total",
        "time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
        "inter_token_latency_seconds": "sglang:time_per_output_token_seconds",
        "e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
    },
    "sglang-0.5.23.prom": {
        "num_requests_running": "sglang:num_running_reqs",
        "num_requests_waiting": "sglang:num_queue_reqs",
        "kv_cache_usage_perc": "sglang:token_usage",
        "prompt_tokens_total": "sglang:prompt_tokens_total",
        "generation_tokens_total": "sglang:generation_tokens_total",
        "request_success_total": "sglang:num_requests_total",
        "prefix_cache_queries_total": "sglang:prompt_tokens_total",
        "prefix_cache_hits_total": "sglang:cached_tokens_total",
        "time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
        "inter_token_latency_seconds": "sglang:inter_token_latency_seconds",
        "e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
    },
}

Sample = tuple[str, tuple[tuple[str, str], ...]]


def engine_of(page_name: str) -> str:
    return page_name.split("-", 1)[0]


def rewriter_for(page_name: str, profiles: tuple[str, ...] = ALL_PROFILES) -> Rewriter:
    spec = get_engine_spec(engine_of(page_name))
    return Rewriter(spec.metric_sources, profile_targets(profiles, "outrider"))


def samples_by_name(text: str) -> dict[Sample, float]:
    """Every sample of a page, keyed by (sample name, sorted labels), parsed by prometheus_client (an oracle
    independent of the code under test)."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series_of(samples: dict[Sample, float], family: str) -> dict[Sample, float]:
    """The samples of one family, with the family name replaced by '' so two families compare directly."""
    suffixes = ("", "_bucket", "_sum", "_count")
    return {
        (name[len(family) :], labels): v
        for (name, labels), v in samples.items()
        if name.startswith(family) and name[len(family) :] in suffixes
    }


def same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here


def test_every_fixture_page_is_pinned() -> None:
    assert set(EXPECTED) == {p.name for p in fixtures_dir().glob("*.prom")}


@pytest.mark.parametrize("page_name", sorted(EXPECTED))
def test_originals_are_kept_byte_for_byte(engine_pages: dict[str, str], page_name: str) -> None:
    page = engine_pages[page_name]
    out = rewriter_for(page_name).rewrite(page)
    assert out.startswith(page)
    assert len(out) > len(page)


@pytest.mark.parametrize("page_name", sorted(EXPECTED))
def test_unified_series_equal_their_source(engine_pages: dict[str, str], page_name: str) -> None:
    page = engine_pages[page_name]
    out = samples_by_name(rewriter_for(page_name, ("outrider",)).rewrite(page))
    source = samples_by_name(page)
    for concept, family in EXPECTED[page_name].items():
        want = series_of(source, family)
        got = series_of(out, f"outrider:{concept}")
        assert want, f"fixture {page_name} has no samples of {family}"
        assert got.keys() == want.keys(), concept
        assert all(same(got[k], want[k]) for k in want), concept


@pytest.mark.parametrize("page_name", sorted(EXPECTED))
def test_only_mappable_concepts_are_published(engine_pages: dict[str, str], page_name: str) -> None:
    out = rewriter_for(page_name, ("outrider",)).rewrite(engine_pages[page_name])
    published = {
        line.split(" ")[2].removeprefix("outrider:") for line in out.splitlines() if line.startswith("# TYPE outrider:")
    }
    assert published == set(EXPECTED[page_name])
    assert published <= set(UNIFIED)


@pytest.mark.parametrize("page_name", sorted(EXPECTED))
def test_no_family_or_series_appears_twice(engine_pages: dict[str, str], page_name: str) -> None:
    out = rewriter_for(page_name).rewrite(engine_pages[page_name])
    types = Counter(line.split(" ")[2] for line in out.splitlines() if line.startswith("# TYPE "))
    helps = Counter(line.split(" ")[2] for line in out.splitlines() if line.startswith("# HELP "))
    assert [n for n, c in types.items() if c > 1] == []
    assert [n for n, c in helps.items() if c > 1] == []
    series = Counter(line.rsplit(" ", 1)[0] for line in out.splitlines() if line and not line.startswith("#"))
    assert [s for s, c in series.items() if c > 1] == []


def test_new_name_wins_when_both_old_and_new_are_served(engine_pages: dict[str, str]) -> None:
    # vLLM 0.10 serves gpu_cache_usage_perc and kv_cache_usage_perc, and both prefix-cache spellings.
    page = engine_pages["vllm-0.10.x.prom"]
    out = rewriter_for("vllm-0.10.x.prom", ("outrider",)).rewrite(page)
    unified = [ln for ln in out.splitlines() if ln.startswith("outrider:kv_cache_usage_perc")]
    new = [ln for ln in page.splitlines() if ln.startswith("vllm:kv_cache_usage_perc")]
    old = [ln for ln in page.splitlines() if ln.startswith("vllm:gpu_cache_usage_perc")]
    assert old and new
    assert len(unified) == len(new)
    assert [ln.removeprefix("outrider:kv_cache_usage_perc") for ln in unified] == [
        ln.removeprefix("vllm:kv_cache_usage_perc") for ln in new
    ]


@pytest.mark.parametrize("page_name", sorted(EXPECTED))
def test_counters_keep_total_and_parse_as_counters(engine_pages: dict[str, str], page_name: str) -> None:
    # Both peer runtimes parse with prometheus_client, which folds `x_total` into family `x`, and then look up
    # `x_total`: they never emit a renamed counter. Parse our output the same way and find every counter.
    out = rewriter_for(page_name).rewrite(engine_pages[page_name])
    families = {f.name: f for f in text_string_to_metric_families(out)}
    expected_counters = [c for c in EXPECTED[page_name] if c.endswith("_total")]
    assert expected_counters
    for concept in expected_counters:
        family = families[f"outrider:{concept.removesuffix('_total')}"]
        assert family.type == "counter"
        assert family.samples and all(s.name == f"outrider:{concept}" for s in family.samples)


def test_peer_profiles_emit_the_peers_counter_names(engine_pages: dict[str, str]) -> None:
    out = samples_by_name(rewriter_for("vllm-0.32.0-cpu.prom").rewrite(engine_pages["vllm-0.32.0-cpu.prom"]))
    source = samples_by_name(engine_pages["vllm-0.32.0-cpu.prom"])
    pairs = {
        "kthena:generation_tokens_total": "vllm:generation_tokens_total",
        "aibrix:generation_tokens_total": "vllm:generation_tokens_total",
        "aibrix:prompt_tokens_total": "vllm:prompt_tokens_total",
        "aibrix:request_success_total": "vllm:request_success_total",
        "aibrix:queue_size": "vllm:num_requests_waiting",
        "aibrix:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
        "kthena:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
        "aibrix:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
    }
    for target, family in pairs.items():
        want = series_of(source, family)
        assert want and series_of(out, target) == want, target


def test_aibrix_sglang_only_names(engine_pages: dict[str, str]) -> None:
    page = engine_pages["sglang-0.5.23.prom"]
    out = samples_by_name(rewriter_for("sglang-0.5.23.prom", ("aibrix",)).rewrite(page))
    source = samples_by_name(page)
    for target, family in {
        "aibrix:generation_throughput": "sglang:gen_throughput",
        "aibrix:cache_hit_rate": "sglang:cache_hit_rate",
        "aibrix:token_usage": "sglang:token_usage",
        "aibrix:queue_size": "sglang:num_queue_reqs",
    }.items():
        want = series_of(source, family)
        assert want and series_of(out, target) == want, target


def test_a_family_typed_otherwise_is_not_relabelled() -> None:
    # A page that (wrongly, or in some future version) types the new family as a gauge must not produce a
    # unified counter family full of gauge samples; the old spelling, correctly typed, is used instead.
    page = (
        "# TYPE vllm:prefix_cache_hits_total gauge\n"
        'vllm:prefix_cache_hits_total{model_name="m"} 3.0\n'
        "# TYPE vllm:gpu_prefix_cache_hits_total counter\n"
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 7.0\n'
    )
    out = rewriter_for("vllm-x", ("outrider",)).rewrite(page)
    assert 'outrider:prefix_cache_hits_total{model_name="m"} 7.0' in out.splitlines()
    assert 'outrider:prefix_cache_hits_total{model_name="m"} 3.0' not in out.splitlines()


def test_labels_values_and_timestamps_are_copied_verbatim() -> None:
    page = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="a, b \\"c\\"",engine="0"} 1.7954814901473546e+09 1700000000000\n'
        "vllm:num_requests_waiting NaN\n"
    )
    out = rewriter_for("vllm-x", ("outrider",)).rewrite(page).splitlines()
    assert (
        'outrider:num_requests_waiting{model_name="a, b \\"c\\"",engine="0"} 1.7954814901473546e+09 1700000000000'
        in out
    )
    assert "outrider:num_requests_waiting NaN" in out


def test_page_without_trailing_newline_stays_valid() -> None:
    page = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2"
    out = rewriter_for("vllm-x", ("outrider",)).rewrite(page)
    assert out.startswith(page + "\n")
    assert "outrider:num_requests_running 2\n" in out


def test_empty_and_unrelated_pages_add_nothing() -> None:
    rw = rewriter_for("vllm-x")
    assert rw.rewrite("") == ""
    page = "# TYPE foo gauge\nfoo 1\n"
    assert rw.rewrite(page) == page


# Where an engine version serves two spellings, the one the unified series must come from (engines.md §3).
NEWEST = {
    ("vllm", "kv_cache_usage_perc"): "vllm:kv_cache_usage_perc",
    ("vllm", "prefix_cache_queries_total"): "vllm:prefix_cache_queries_total",
    ("vllm", "prefix_cache_hits_total"): "vllm:prefix_cache_hits_total",
    ("vllm", "inter_token_latency_seconds"): "vllm:inter_token_latency_seconds",
    ("sglang", "inter_token_latency_seconds"): "sglang:inter_token_latency_seconds",
}


@pytest.mark.parametrize(("engine", "concept"), sorted(NEWEST))
def test_newest_spelling_wins_whichever_comes_first_on_the_page(engine: str, concept: str) -> None:
    sources = get_engine_spec(engine).metric_sources[concept]
    assert len(sources) == 2 and NEWEST[(engine, concept)] in sources
    kind = "histogram" if concept.endswith("_seconds") else ("counter" if concept.endswith("_total") else "gauge")
    lines = []
    for i, family in enumerate(reversed(sources)):  # the old spelling first on the page
        lines.append(f"# TYPE {family} {kind}")
        if kind == "histogram":
            lines += [f'{family}_bucket{{le="+Inf"}} {i}', f"{family}_sum {i}", f"{family}_count {i}"]
        else:
            lines.append(f"{family} {i}")
    page = "\n".join(lines) + "\n"
    out = Rewriter(get_engine_spec(engine).metric_sources, profile_targets(("outrider",), "outrider")).rewrite(page)
    unified = [ln for ln in out.splitlines() if ln.startswith(f"outrider:{concept}")]
    newest_value = str(list(reversed(sources)).index(NEWEST[(engine, concept)]))
    assert unified and all(ln.endswith(" " + newest_value) for ln in unified), unified
