"""vLLM: every metric generation a user may run (V0 about 0.7, V1 0.9-0.10 with both spellings, V1 today).

Runtime LoRA API (seen live on 0.32.0): `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` answers 200 with
plain text; a taken name is 400 JSON `{"error": {"message": "... has already been loaded ...", "type":
"InvalidUserInput"}}`; a path without an adapter is 404 JSON `NotFoundError`. `POST /v1/unload_lora_adapter
{"lora_name"}` answers 200 text, or 404 JSON `The lora adapter 'a' cannot be found.` Without
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=true` the routes do not exist: FastAPI's 404 `{"detail": "Not Found"}`.
"""

from __future__ import annotations

from typing import Any

import httpx

from outrider.engines.base import CacheShapeInfo, EngineSpec, LoraApi
from outrider.engines.client import EngineClient
from outrider.errors import EngineRefused

_DISABLED = (
    "the engine at {url} has no runtime LoRA API (start vLLM with --enable-lora and "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true)"
)


def _error_message(response: httpx.Response) -> tuple[str, bool]:
    """The engine's own message, and whether the body is FastAPI's bare route-not-found answer."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}", False
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or f"HTTP {response.status_code}"), False
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"]), body["detail"] == "Not Found"
    return response.text.strip() or f"HTTP {response.status_code}", False


class VllmLora(LoraApi):
    async def load(self, engine: EngineClient, name: str, path: str) -> None:
        response = await engine.request("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code == 200:
            return
        message, route_missing = _error_message(response)
        if route_missing:
            raise EngineRefused(_DISABLED.format(url=engine.base_url), status=502, reason="lora_disabled")
        reason = "already_loaded" if "already been loaded" in message else "rejected"
        raise EngineRefused(message, status=response.status_code, reason=reason)

    async def unload(self, engine: EngineClient, name: str) -> None:
        response = await engine.request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code == 200:
            return
        message, route_missing = _error_message(response)
        if route_missing:
            raise EngineRefused(_DISABLED.format(url=engine.base_url), status=502, reason="lora_disabled")
        reason = "unknown_adapter" if response.status_code == 404 else "rejected"
        raise EngineRefused(message, status=response.status_code, reason=reason)


VLLM = EngineSpec(
    name="vllm",
    metric_sources={
        "num_requests_running": ("vllm:num_requests_running",),
        "num_requests_waiting": ("vllm:num_requests_waiting",),
        # kv_cache_usage_perc from 0.9; gpu_cache_usage_perc before, and beside it up to 0.10.
        "kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "prompt_tokens_total": ("vllm:prompt_tokens_total",),
        "generation_tokens_total": ("vllm:generation_tokens_total",),
        "request_success_total": ("vllm:request_success_total",),
        "num_preemptions_total": ("vllm:num_preemptions_total",),
        # V0 has only a hit-rate gauge, which is not a counter of queries or hits: nothing maps from it.
        "prefix_cache_queries_total": (
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ),
        "prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
        "time_to_first_token_seconds": ("vllm:time_to_first_token_seconds",),
        # inter_token_latency_seconds from 0.10.2; time_per_output_token_seconds before (and hidden until ~0.20).
        "inter_token_latency_seconds": (
            "vllm:inter_token_latency_seconds",
            "vllm:time_per_output_token_seconds",
        ),
        "e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds",),
    },
    lora=VllmLora(),
    # Every generation, V0 included, labels its cache config this way (one series per engine in V1, each with the
    # blocks of all engines: the front end sums them, vllm/v1/engine/core_client.py, since data parallelism came).
    cache_shape=(CacheShapeInfo("vllm:cache_config_info", "block_size", "num_gpu_blocks", count_is_pod_total=True),),
    # A gauge whose value is the time it was set, one series per label set ever seen (the label sets are never
    # removed), without an engine label; max_lora is vLLM's --max-loras.
    lora_info="vllm:lora_requests_info",
)
