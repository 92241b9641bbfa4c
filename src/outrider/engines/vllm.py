"""vLLM: every metric generation a user may run (V0 about 0.7, V1 0.9-0.10 with both spellings, V1 today)."""

from outrider.engines.base import EngineSpec

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
)
