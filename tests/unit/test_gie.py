"""The `gie` profile against every real engine page, and against multi-series pages derived from them.

Every page here is a real engine page (tests/fixtures/engine-metrics) or is made from one by the helpers below,
which copy a family's real sample lines with other label values and numbers (data parallel ranks, tensor-parallel
duplicates, LoRA series stamped at other times), or swap SGLang's newer cache gauges for the older info-style
family that carries the same two numbers. Values are checked against prometheus_client's parser, an oracle
independent of the code under test.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from outrider.engines import get_engine_spec
from outrider.metrics.concepts import PROFILES, profile_targets
from outrider.metrics.gie import (
    CACHE_CONFIG,
    KV_USAGE,
    LORA_INFO,
    LORA_WINDOW,
    QUEUED,
    RUNNING,
    AdapterLoraInfo,
    ProtocolRewrite,
    parse_sample,
)
from outrider.metrics.standardize import Rewriter, RewrittenPage
from tests.conftest import fixtures_dir

SGLANG_PAGES = ("sglang-0.4.x.prom", "sglang-0.5.23.prom")
VLLM_PAGES = ("vllm-0.10.x.prom", "vllm-0.32.0-cpu.prom", "vllm-0.34.0.prom", "vllm-0.7.x-v0.prom")  # one engine
DP_PAGE = "vllm-0.34.0-dp2.prom"  # vLLM 0.34.0 with --data-parallel-size 2: every family has engine "0" and "1"
# The protocol families each real page can feed (the 0.4 SGLang page is a selection without cache gauges; SGLang
# has no LoRA family, which outrider serves from its adapter state instead, see AdapterLoraInfo).
FAMILIES = {
    "sglang-0.4.x.prom": {QUEUED, RUNNING, KV_USAGE},
    "sglang-0.5.23.prom": {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG},
    "vllm-0.10.x.prom": {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG},
    "vllm-0.32.0-cpu.prom": {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO},
    "vllm-0.34.0.prom": {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO},
    DP_PAGE: {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO},
    "vllm-0.7.x-v0.prom": {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO},
}
ALL_PROTOCOL = {QUEUED, RUNNING, KV_USAGE, CACHE_CONFIG, LORA_INFO}

Labels = dict[str, str]


def engine_of(page_name: str) -> str:
    return page_name.split("-", 1)[0]


def rewrite(engine: str, page: str, profiles: tuple[str, ...] = ("outrider", "gie")) -> RewrittenPage:
    spec = get_engine_spec(engine)
    protocol = ProtocolRewrite.for_engine(spec) if "gie" in profiles else None
    return Rewriter(spec.metric_sources, profile_targets(profiles, "outrider"), protocol).rewrite_page(page)


def series(text: str, family: str) -> list[tuple[Labels, float]]:
    """(labels, value) of every sample of `family`, as prometheus_client parses the page."""
    return [
        (dict(s.labels), s.value)
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name == family
    ]


def declared(text: str, family: str) -> Counter[str]:
    """How many HELP and TYPE lines name `family`."""
    return Counter(ln.split(" ")[1] for ln in text.splitlines() if re.match(rf"# (HELP|TYPE) {re.escape(family)} ", ln))


def the_one(text: str, family: str) -> tuple[Labels, float]:
    """The family's only series, after checking it is served once, typed gauge, with one series."""
    decl = declared(text, family)
    assert decl["TYPE"] == 1 and decl["HELP"] <= 1, family  # the V0 page has a TYPE without HELP
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == family]
    assert fam.type == "gauge", family
    (one,) = series(text, family)
    return one


# -- deriving multi-series pages from the real ones --


def family_lines(page: str, family: str) -> list[str]:
    return [ln for ln in page.split("\n") if ln.startswith((family + "{", family + " "))]


def with_series(page: str, family: str, make: Callable[[str], list[str]]) -> str:
    """The page with each sample line of `family` replaced by the lines `make` derives from it."""
    targets = set(family_lines(page, family))
    out: list[str] = []
    for line in page.split("\n"):
        out.extend(make(line) if line in targets else [line])
    return "\n".join(out)


def relabel(line: str, changes: Labels, value: float) -> str:
    """A copy of a real sample line with some labels set (added first when new) and another value."""
    head = line.rsplit(" ", 1)[0]
    for key, val in changes.items():
        if f'{key}="' in head:
            head = re.sub(rf'{key}="[^"]*"', f'{key}="{val}"', head)
        else:
            head = head.replace("{", f'{{{key}="{val}",', 1)
    return f"{head} {text_value(value)}"


def replicas(page: str, family: str, values: list[tuple[Labels, float]]) -> str:
    return with_series(page, family, lambda line: [relabel(line, labels, v) for labels, v in values])


def per_engine(page: str, family: str, values: dict[str, tuple[Labels, float]]) -> str:
    """The page with the series of each `engine` label value given new labels and value (the DP page's own lines)."""

    def make(line: str) -> list[str]:
        engine = re.search(r'engine="([^"]*)"', line)
        assert engine is not None and engine.group(1) in values, line
        labels, value = values[engine.group(1)]
        return [relabel(line, labels, value)]

    return with_series(page, family, make)


def text_value(value: float) -> str:
    """A number as the text format writes it (independent of outrider's own formatter)."""
    return "+Inf" if value == math.inf else "-Inf" if value == -math.inf else repr(value)


# -- every real page --


def test_every_fixture_page_is_run_through_the_profile() -> None:
    assert set(FAMILIES) == {p.name for p in fixtures_dir().glob("*.prom")}


@pytest.mark.parametrize("page_name", sorted(FAMILIES))
def test_each_protocol_family_is_served_once_as_one_gauge_series(engine_pages: dict[str, str], page_name: str) -> None:
    served = rewrite(engine_of(page_name), engine_pages[page_name]).text
    for family in FAMILIES[page_name]:
        the_one(served, family)
    for family in ALL_PROTOCOL - FAMILIES[page_name]:
        assert not declared(served, family) and not series(served, family), family
    types = Counter(ln.split(" ")[2] for ln in served.splitlines() if ln.startswith("# TYPE "))
    assert [name for name, n in types.items() if n > 1] == []


@pytest.mark.parametrize("page_name", SGLANG_PAGES)
def test_sglang_page_is_kept_and_vllm_families_are_derived_from_it(
    engine_pages: dict[str, str], page_name: str
) -> None:
    page = engine_pages[page_name]
    served = rewrite("sglang", page).text
    assert served.startswith(page)
    queue, running, usage = (
        series(page, f) for f in ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage")
    )
    assert len(queue) == len(running) == len(usage) == 1  # one scheduler on these pages
    assert the_one(served, QUEUED) == queue[0]
    assert the_one(served, RUNNING) == running[0]
    assert the_one(served, KV_USAGE) == usage[0]
    if CACHE_CONFIG in FAMILIES[page_name]:
        ((_, page_size),), ((labels, pages),) = series(page, "sglang:page_size"), series(page, "sglang:num_pages")
        got_labels, value = the_one(served, CACHE_CONFIG)
        assert value == 1.0
        assert got_labels == {**labels, "block_size": str(int(page_size)), "num_gpu_blocks": str(int(pages))}


@pytest.mark.parametrize("page_name", VLLM_PAGES)
def test_vllm_families_are_the_engines_own_and_the_page_is_otherwise_untouched(
    engine_pages: dict[str, str], page_name: str
) -> None:
    page = engine_pages[page_name]
    served = rewrite("vllm", page).text
    for family in (QUEUED, RUNNING, CACHE_CONFIG):
        assert the_one(served, family) == series(page, family)[0]
    own_kv = series(page, KV_USAGE) or series(page, "vllm:gpu_cache_usage_perc")  # V0 has only the old name
    assert the_one(served, KV_USAGE) == own_kv[0]
    # vLLM's LoRA series become one, where the first of them stood; every other line stays, in its place.
    lora = family_lines(page, LORA_INFO)
    served_lora = family_lines(served, LORA_INFO)
    assert len(served_lora) == (1 if lora else 0)
    kept = [line for line in page.split("\n") if line not in lora[1:]]
    kept = [served_lora[0] if lora and line == lora[0] else line for line in kept]
    assert served.startswith("\n".join(kept))


def test_vllm_lora_state_joins_the_sets_stamped_within_the_window_of_the_newest(engine_pages: dict[str, str]) -> None:
    # As vLLM 0.32.0 served it: the empty set stamped 3.6 ms after the last step of a request to b (the newest, but
    # not what ran), a's set 6 s before. One series: b, at the newest's time; a has ended long enough ago.
    page = engine_pages["vllm-0.32.0-cpu.prom"]
    stamps = {labels["running_lora_adapters"]: value for labels, value in series(page, LORA_INFO)}
    assert stamps["b"] < stamps[""] < stamps["b"] + 0.01 and stamps["a"] < stamps[""] - LORA_WINDOW

    labels, stamp = the_one(rewrite("vllm", page).text, LORA_INFO)

    assert labels == {"max_lora": "4", "running_lora_adapters": "b", "waiting_lora_adapters": "b"}
    assert stamp == stamps[""]


def test_vllm_lora_state_alone_in_its_window_is_the_newest_series_wherever_it_stands(
    engine_pages: dict[str, str],
) -> None:
    # vLLM writes its series in creation order, so the first one is not the newest in general: here the last is.
    page = engine_pages["vllm-0.32.0-cpu.prom"]
    lines = family_lines(page, LORA_INFO)
    stamps = {line: 1.7e9 + 10 * i for i, line in enumerate(lines)}  # further apart than LORA_WINDOW
    derived = with_series(page, LORA_INFO, lambda line: [relabel(line, {}, stamps[line])])
    served = rewrite("vllm", derived).text
    assert family_lines(served, LORA_INFO) == [relabel(lines[-1], {}, stamps[lines[-1]])]


@pytest.mark.parametrize("page_name", ["vllm-0.34.0.prom", DP_PAGE])
def test_vllm_block_count_is_vllms_own_figure(engine_pages: dict[str, str], page_name: str) -> None:
    # vLLM's front end sums its engines' blocks into one cache config and labels every engine's series with it:
    # 8192 blocks per engine, and both series of the DP page say 16384. That is the pod's figure, served as is.
    page = engine_pages[page_name]
    own = series(page, CACHE_CONFIG)
    (figure,) = {labels["num_gpu_blocks"] for labels, _ in own}
    assert figure == ("16384" if page_name == DP_PAGE else "8192") and len(own) == (2 if page_name == DP_PAGE else 1)

    labels, value = the_one(rewrite("vllm", page).text, CACHE_CONFIG)

    assert labels["num_gpu_blocks"] == figure and labels["block_size"] == "16" and value == 1.0
    assert labels == {k: v for k, v in own[0][0].items() if k != "engine" or len(own) == 1}


def test_vllm_data_parallel_families_are_combined_into_one_series(engine_pages: dict[str, str]) -> None:
    page = engine_pages[DP_PAGE]
    derived = per_engine(page, QUEUED, {"0": ({}, 3.0), "1": ({}, 4.0)})
    derived = per_engine(derived, RUNNING, {"0": ({}, 1.0), "1": ({}, 2.0)})
    derived = per_engine(derived, KV_USAGE, {"0": ({}, 0.25), "1": ({}, 0.75)})
    # Each engine stamps its own adapter set: b now on one, a half a second ago on the other; the rest is old.
    now = 1.8e9
    stamped = {
        'running_lora_adapters="a"': now - LORA_WINDOW / 2,
        'running_lora_adapters="b"': now,
    }
    derived = with_series(
        derived, LORA_INFO, lambda ln: [relabel(ln, {}, next((t for k, t in stamped.items() if k in ln), now - 30))]
    )
    assert len(family_lines(page, LORA_INFO)) == 4

    served = rewrite("vllm", derived).text
    assert the_one(served, QUEUED) == ({"model_name": "tiny"}, 7.0)
    assert the_one(served, RUNNING) == ({"model_name": "tiny"}, 3.0)
    assert the_one(served, KV_USAGE) == ({"model_name": "tiny"}, 0.5)
    cache_labels, _ = the_one(served, CACHE_CONFIG)
    assert cache_labels["num_gpu_blocks"] == "16384" and "engine" not in cache_labels
    labels, stamp = the_one(served, LORA_INFO)
    assert labels == {"max_lora": "4", "running_lora_adapters": "b,a", "waiting_lora_adapters": "b,a"}
    assert stamp == now
    # The per-engine series stay under the unified names, made from the page as vLLM served it.
    assert sorted(v for _, v in series(served, "outrider:num_requests_waiting")) == [3.0, 4.0]


def test_vllm_data_parallel_cache_config_before_profiling_is_one_series(engine_pages: dict[str, str]) -> None:
    # Before profiling vLLM has no block count yet and writes num_gpu_blocks="None" on every engine's series.
    unknown = ({"num_gpu_blocks": "None"}, 1.0)
    page = per_engine(engine_pages[DP_PAGE], CACHE_CONFIG, {"0": unknown, "1": unknown})

    labels, value = the_one(rewrite("vllm", page).text, CACHE_CONFIG)

    assert labels["num_gpu_blocks"] == "None" and labels["block_size"] == "16" and "engine" not in labels
    assert value == 1.0


@pytest.mark.parametrize(
    ("values", "queued", "usage"),
    [
        ((1e308, 1e308), math.inf, math.inf),
        ((math.inf, -math.inf), math.nan, math.nan),
        ((math.inf, 1.0), math.inf, math.inf),
    ],
)
def test_data_parallel_values_beyond_floats_still_give_the_page(
    engine_pages: dict[str, str], values: tuple[float, float], queued: float, usage: float
) -> None:
    # A hostile (or broken) engine: the sums overflow or meet +Inf and -Inf. The page is still served, with the
    # value float arithmetic gives, and every other family as it was.
    page = engine_pages[DP_PAGE]
    by_engine: dict[str, tuple[Labels, float]] = {"0": ({}, values[0]), "1": ({}, values[1])}
    for family in (QUEUED, RUNNING, KV_USAGE):
        page = per_engine(page, family, by_engine)
    blocks = {"0": ({"num_gpu_blocks": "1e308"}, 1.0), "1": ({"num_gpu_blocks": "1e308"}, 1.0)}
    page = per_engine(page, CACHE_CONFIG, blocks)

    served = rewrite("vllm", page).text

    for family, want in ((QUEUED, queued), (RUNNING, queued), (KV_USAGE, usage)):
        _, got = the_one(served, family)
        assert got == want or (math.isnan(got) and math.isnan(want)), family
    assert the_one(served, CACHE_CONFIG)[0]["num_gpu_blocks"] == str(int(1e308))


def test_sglang_cache_gauges_beyond_floats_give_no_block_count(engine_pages: dict[str, str]) -> None:
    page = engine_pages["sglang-0.5.23.prom"]
    page = replicas(page, "sglang:num_pages", [({"dp_rank": "0"}, 1e308), ({"dp_rank": "1"}, 1e308)])
    page = replicas(page, "sglang:num_queue_reqs", [({"dp_rank": "0"}, math.inf), ({"dp_rank": "1"}, -math.inf)])
    served = rewrite("sglang", page).text
    assert not series(served, CACHE_CONFIG)  # no whole number of blocks: unknown to the picker, as when absent
    assert math.isnan(the_one(served, QUEUED)[1])


def test_sglang_data_parallel_ranks_add_up_and_tensor_parallel_ranks_count_once(engine_pages: dict[str, str]) -> None:
    page = engine_pages["sglang-0.5.23.prom"]

    def ranks(values: tuple[float, float]) -> list[tuple[Labels, float]]:
        # Two data-parallel replicas, each reported by both of its tensor-parallel ranks.
        return [({"dp_rank": str(dp), "tp_rank": str(tp)}, values[dp]) for dp in (0, 1) for tp in (0, 1)]

    derived = replicas(page, "sglang:num_queue_reqs", ranks((2.0, 5.0)))
    derived = replicas(derived, "sglang:num_running_reqs", ranks((7.0, 3.0)))
    derived = replicas(derived, "sglang:token_usage", ranks((0.5, 0.7)))
    derived = replicas(derived, "sglang:page_size", ranks((16.0, 16.0)))
    derived = replicas(derived, "sglang:num_pages", ranks((1000.0, 1000.0)))
    served = rewrite("sglang", derived).text
    shared = {"engine_type": "unified", "model_name": "meta-llama/Llama-3.1-8B-Instruct", "moe_ep_rank": "0"}
    shared["pp_rank"] = "0"
    assert the_one(served, QUEUED) == (shared, 7.0)
    assert the_one(served, RUNNING) == (shared, 10.0)
    labels, usage = the_one(served, KV_USAGE)
    assert labels == shared and math.isclose(usage, 0.6)
    assert the_one(served, CACHE_CONFIG) == ({**shared, "block_size": "16", "num_gpu_blocks": "2000"}, 1.0)


def test_sglang_before_0_5_12_gives_the_cache_shape_as_labels(engine_pages: dict[str, str]) -> None:
    # The same two numbers as the 0.5.23 page, in the info-style family older SGLang serves instead of the gauges.
    page = engine_pages["sglang-0.5.23.prom"]
    ((labels, size),), ((_, pages),) = series(page, "sglang:page_size"), series(page, "sglang:num_pages")
    info = relabel(family_lines(page, "sglang:page_size")[0], {}, 1.0).replace(
        "sglang:page_size", "sglang:cache_config_info"
    )
    info = relabel(info, {"num_pages": str(int(pages)), "page_size": str(int(size))}, 1.0)
    old = with_series(page, "sglang:page_size", lambda ln: [])
    old = with_series(old, "sglang:num_pages", lambda ln: [])
    old = old.replace("# TYPE sglang:page_size gauge", f"# TYPE sglang:cache_config_info gauge\n{info}")
    assert series(old, "sglang:cache_config_info") and not series(old, "sglang:num_pages")
    served = rewrite("sglang", old).text
    assert the_one(served, CACHE_CONFIG) == (
        {**labels, "block_size": str(int(size)), "num_gpu_blocks": str(int(pages))},
        1.0,
    )


def test_sglang_lora_pool_gauge_gives_max_lora(engine_pages: dict[str, str]) -> None:
    page = engine_pages["sglang-0.5.23.prom"]
    assert rewrite("sglang", page).max_lora is None  # LoRA was off when this page was made
    slots = relabel(family_lines(page, "sglang:num_running_reqs")[0], {}, 4.0).replace(
        "sglang:num_running_reqs", "sglang:lora_pool_slots_total"
    )
    with_slots = page.replace(
        "# TYPE sglang:num_running_reqs gauge",
        f"# TYPE sglang:lora_pool_slots_total gauge\n{slots}\n# TYPE sglang:num_running_reqs gauge",
    )
    assert rewrite("sglang", with_slots).max_lora == 4


@pytest.mark.parametrize(("engine", "source"), [("sglang", "sglang:num_queue_reqs"), ("vllm", QUEUED)])
def test_a_source_typed_as_no_gauge_feeds_nothing(engine_pages: dict[str, str], engine: str, source: str) -> None:
    # The picker reads gauges; a family the engine declares otherwise does not mean what the protocol means.
    page = engine_pages["sglang-0.5.23.prom" if engine == "sglang" else "vllm-0.32.0-cpu.prom"]
    retyped = page.replace(f"# TYPE {source} gauge", f"# TYPE {source} counter")
    retyped = replicas(retyped, source, [({"x": "1"}, 1.0), ({"x": "2"}, 2.0)])
    served = rewrite(engine, retyped).text
    assert family_lines(served, source) == family_lines(retyped, source)  # as the engine wrote it, not combined
    if engine == "sglang":
        assert not declared(served, QUEUED)


def test_a_protocol_family_the_page_already_has_is_never_added_twice(engine_pages: dict[str, str]) -> None:
    # An SGLang page that also carries a vllm:num_requests_waiting family (as a proxy in front of both might).
    page = engine_pages["sglang-0.5.23.prom"]
    vllm_family = [
        ln
        for ln in engine_pages["vllm-0.32.0-cpu.prom"].split("\n")
        if QUEUED + " " in ln or ln.startswith(QUEUED + "{")
    ]
    mixed = page + "\n".join(vllm_family) + "\n"
    served = rewrite("sglang", mixed).text
    assert declared(served, QUEUED) == Counter({"HELP": 1, "TYPE": 1})
    assert series(served, QUEUED) == series(mixed, QUEUED)


def test_without_the_profile_nothing_changes(engine_pages: dict[str, str]) -> None:
    page = engine_pages["vllm-0.32.0-cpu.prom"]
    served = rewrite("vllm", page, ("outrider",)).text
    assert served.startswith(page) and len(series(served, LORA_INFO)) == 3
    assert "gie" in PROFILES and profile_targets(("gie",), "outrider") == {}


# -- LoRA state from outrider's adapters (engines without a LoRA family) --


def test_adapter_lora_info_lists_the_loaded_adapters() -> None:
    loaded = ["b", "a", "a"]
    info = AdapterLoraInfo(lambda: loaded, clock=lambda: 1.8e9)
    text = info.render(4)
    assert the_one(text, LORA_INFO) == (
        {"max_lora": "4", "running_lora_adapters": "a,b", "waiting_lora_adapters": ""},
        1.8e9,
    )
    loaded.clear()
    assert the_one(info.render(4), LORA_INFO)[0]["running_lora_adapters"] == ""
    assert info.render(None) == ""  # nothing loaded and nothing known: absent, i.e. "no adapter loaded"
    loaded.append("c")
    assert the_one(info.render(None), LORA_INFO)[0] == {
        "max_lora": "",
        "running_lora_adapters": "c",
        "waiting_lora_adapters": "",
    }


# -- the sample-line parser the rewrite relies on --


@pytest.mark.parametrize("page_name", sorted(FAMILIES))
def test_parser_agrees_with_prometheus_client_on_every_real_line(engine_pages: dict[str, str], page_name: str) -> None:
    page = engine_pages[page_name]
    ours = [parse_sample(ln) for ln in page.split("\n") if ln and not ln.startswith("#")]
    theirs = [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(page) for s in f.samples]
    assert len(ours) == len(theirs)
    for mine, oracle in zip(ours, theirs, strict=True):
        assert mine is not None
        assert mine[:2] == oracle[:2] and (mine[2] == oracle[2] or (math.isnan(mine[2]) and math.isnan(oracle[2])))
