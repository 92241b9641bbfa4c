"""SGLang 0.4 and 0.5."""

from outrider.engines.base import EngineSpec

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
)
