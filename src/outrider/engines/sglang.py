"""SGLang 0.4 and 0.5.

Runtime LoRA API (0.5.23 source): `POST /load_lora_adapter {"lora_name", "lora_path", "pinned"}` and
`POST /unload_lora_adapter {"lora_name"}`, with no `/v1` prefix. Every answer is JSON
`{"success", "error_message", "loaded_adapters": {name: path}}`: 200 on success, 400 on any failure. The failure
kind is read from `loaded_adapters` (a refused load of a name already listed = taken; a refused unload of a name
not listed = unknown), not from the wording of `error_message`, which changes between versions.
"""

from __future__ import annotations

from typing import Any

import httpx

from outrider.engines.base import CacheShapeGauges, CacheShapeInfo, EngineSpec, LoraApi
from outrider.engines.client import EngineClient
from outrider.errors import EngineRefused


def _answer(response: httpx.Response) -> tuple[bool, str, dict[str, Any]]:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return False, response.text.strip() or f"HTTP {response.status_code}", {}
    loaded = body.get("loaded_adapters")
    message = body.get("error_message") or body.get("detail") or f"HTTP {response.status_code}"
    return bool(body.get("success")), str(message), loaded if isinstance(loaded, dict) else {}


class SglangLora(LoraApi):
    async def load(self, engine: EngineClient, name: str, path: str) -> None:
        response = await engine.request(
            "POST", "/load_lora_adapter", json={"lora_name": name, "lora_path": path, "pinned": False}
        )
        success, message, loaded = _answer(response)
        if response.status_code == 200 and success:
            return
        reason = "already_loaded" if name in loaded else "rejected"
        raise EngineRefused(message, status=response.status_code, reason=reason)

    async def unload(self, engine: EngineClient, name: str) -> None:
        response = await engine.request("POST", "/unload_lora_adapter", json={"lora_name": name})
        success, message, loaded = _answer(response)
        if response.status_code == 200 and success:
            return
        if response.status_code == 400 and name not in loaded:
            # SGLang says 400 for everything; an unknown name is "not found" to our callers, as on vLLM.
            raise EngineRefused(message, status=404, reason="unknown_adapter")
        raise EngineRefused(message, status=response.status_code, reason="rejected")


SGLANG = EngineSpec(
    name="sglang",
    metric_sources={
        "num_requests_running": ("sglang:num_running_reqs",),
        "num_requests_waiting": ("sglang:num_queue_reqs",),
        # token_usage is the fraction of the KV pool in use, the same quantity as vLLM's kv_cache_usage_perc.
        "kv_cache_usage_perc": ("sglang:token_usage",),
        "prompt_tokens_total": ("sglang:prompt_tokens_total",),
        "generation_tokens_total": ("sglang:generation_tokens_total",),
        # SGLang counts finished requests without a success/abort split; it is the nearest to vLLM's counter.
        "request_success_total": ("sglang:num_requests_total",),
        # A retraction is SGLang's preemption (a running request sent back to the queue to free KV cache).
        "num_preemptions_total": ("sglang:num_retracted_requests_total",),
        # vLLM counts prefix-cache queries and hits in tokens; SGLang's prompt and cached token counters are those.
        "prefix_cache_queries_total": ("sglang:prompt_tokens_total",),
        "prefix_cache_hits_total": ("sglang:cached_tokens_total",),
        "time_to_first_token_seconds": ("sglang:time_to_first_token_seconds",),
        # inter_token_latency_seconds from 0.4.4; time_per_output_token_seconds before.
        "inter_token_latency_seconds": (
            "sglang:inter_token_latency_seconds",
            "sglang:time_per_output_token_seconds",
        ),
        "e2e_request_latency_seconds": ("sglang:e2e_request_latency_seconds",),
        # Only the AIBrix profile names these three (AIBrix emits them for SGLang alone).
        "gen_throughput": ("sglang:gen_throughput",),
        "cache_hit_rate": ("sglang:cache_hit_rate",),
        "token_usage": ("sglang:token_usage",),
    },
    lora=SglangLora(),
    # Plain gauges from 0.5.12; before, one info-style gauge with the two numbers as labels.
    cache_shape=(
        CacheShapeGauges("sglang:page_size", "sglang:num_pages"),
        CacheShapeInfo("sglang:cache_config_info", "page_size", "num_pages"),
    ),
    # SGLang has no per-adapter metric at all; its pool gauge (0.5.23, with --enable-lora) is
    # --max-loras-per-batch, which is what the protocol's max_lora means.
    lora_slots="sglang:lora_pool_slots_total",
)
