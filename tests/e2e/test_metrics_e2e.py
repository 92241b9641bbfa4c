"""outrider beside a real vLLM (CPU): the unified series equal the engine's own values."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.engine import VllmProcess
from tests.e2e.outrider_process import outrider_process

# (unified family, vLLM 0.32 family): the mapping outrider must apply to today's vLLM.
PAIRS = {
    "outrider:num_requests_running": "vllm:num_requests_running",
    "outrider:num_requests_waiting": "vllm:num_requests_waiting",
    "outrider:kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "outrider:prompt_tokens_total": "vllm:prompt_tokens_total",
    "outrider:generation_tokens_total": "vllm:generation_tokens_total",
    "outrider:request_success_total": "vllm:request_success_total",
    "outrider:num_preemptions_total": "vllm:num_preemptions_total",
    "outrider:prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "outrider:prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
    "outrider:time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "outrider:inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "outrider:e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
    "kthena:generation_tokens_total": "vllm:generation_tokens_total",
    "aibrix:queue_size": "vllm:num_requests_waiting",
}
SUFFIXES = ("", "_bucket", "_sum", "_count")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(page: str, family: str) -> Series:
    out: Series = {}
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            rest = s.name[len(family) :]
            if s.name.startswith(family) and rest in SUFFIXES:
                out[(rest, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_unified_series_equal_the_engines_own(vllm: VllmProcess) -> None:
    with outrider_process(
        "-E", "vllm", "-B", vllm.base_url, "--scrape-interval", "0.2", "--metrics-profile", "outrider,kthena,aibrix"
    ) as url:
        completions = 3
        with httpx.Client(timeout=120) as client:
            for i in range(completions):
                r = client.post(
                    f"{vllm.base_url}/v1/completions",
                    json={"model": "tiny", "prompt": f"hello number {i}", "max_tokens": 8},
                )
                assert r.status_code == 200, r.text

            # No traffic now, so the engine's page settles; outrider serves it within a scrape interval or two.
            deadline = time.monotonic() + 15
            while True:
                engine_page = client.get(f"{vllm.base_url}/metrics").text
                served = client.get(f"{url}/metrics").text
                differ = [u for u, src in PAIRS.items() if series(served, u) != series(engine_page, src)]
                if not differ:
                    break
                assert time.monotonic() < deadline, f"unified series never matched the engine's: {differ}"
                time.sleep(0.1)
            ready = client.get(f"{url}/ready")

    assert ready.status_code == 200 and ready.json()["model"] == "tiny"
    assert served.startswith("# HELP") and "vllm:prompt_tokens_total" in served
    for source in PAIRS.values():
        assert series(engine_page, source), f"vLLM served no {source}"
    prompt = sum(series(served, "outrider:prompt_tokens_total").values())
    generated = sum(series(served, "outrider:generation_tokens_total").values())
    ttft_count = sum(
        v for (suffix, _), v in series(served, "outrider:time_to_first_token_seconds").items() if suffix == "_count"
    )
    assert prompt > 0 and generated >= completions
    assert ttft_count >= completions
