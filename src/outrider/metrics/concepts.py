"""The unified quantities outrider publishes, and the name sets (profiles) they are published under.

A concept is engine-neutral: each engine module says which of its own families carries it. A profile maps concepts to
the exact names a consumer expects: outrider's own unified names, or the names the Kthena and AIBrix runtimes emit, so
their dashboards and autoscalers keep working unchanged. The `gie` profile is of another kind: it serves the routing
protocol's families in vLLM's spelling, one combined series each (see `outrider.metrics.gie`), so it adds no
concept names here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]

# Every profile `--metrics-profile` accepts (settings validates the flag against this list).
PROFILES = ("outrider", "kthena", "aibrix", "gie")


@dataclasses.dataclass(frozen=True)
class Concept:
    type: MetricType
    help: str


CONCEPTS: Mapping[str, Concept] = {
    "num_requests_running": Concept("gauge", "Requests currently running on the engine."),
    "num_requests_waiting": Concept("gauge", "Requests waiting in the engine's queue."),
    "kv_cache_usage_perc": Concept("gauge", "Fraction of the KV cache in use (0 to 1)."),
    "prompt_tokens_total": Concept("counter", "Prompt tokens processed."),
    "generation_tokens_total": Concept("counter", "Tokens generated."),
    "request_success_total": Concept("counter", "Requests finished."),
    "num_preemptions_total": Concept("counter", "Requests preempted (SGLang: retracted)."),
    "prefix_cache_queries_total": Concept("counter", "Prefix cache queries, in tokens."),
    "prefix_cache_hits_total": Concept("counter", "Prefix cache hits, in tokens."),
    "time_to_first_token_seconds": Concept("histogram", "Time to first token, in seconds."),
    "inter_token_latency_seconds": Concept("histogram", "Time between output tokens, in seconds."),
    "e2e_request_latency_seconds": Concept("histogram", "End-to-end request latency, in seconds."),
    "gen_throughput": Concept("gauge", "Generation throughput, tokens per second."),
    "cache_hit_rate": Concept("gauge", "Prefix cache hit rate."),
    "token_usage": Concept("gauge", "Fraction of the KV token pool in use."),
}

# The concepts every engine maps under outrider's unified names.
UNIFIED = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_perc",
    "prompt_tokens_total",
    "generation_tokens_total",
    "request_success_total",
    "num_preemptions_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "e2e_request_latency_seconds",
)

# Names the Kthena runtime emits (its time_per_output_token is the inter-token latency).
KTHENA: Mapping[str, tuple[str, ...]] = {
    "generation_tokens_total": ("kthena:generation_tokens_total",),
    "num_requests_waiting": ("kthena:num_requests_waiting",),
    "time_to_first_token_seconds": ("kthena:time_to_first_token_seconds",),
    "inter_token_latency_seconds": ("kthena:time_per_output_token_seconds",),
    "e2e_request_latency_seconds": ("kthena:e2e_request_latency_seconds",),
}

# Names the AIBrix runtime emits; it publishes KV usage under both its old and new spelling.
AIBRIX: Mapping[str, tuple[str, ...]] = {
    "num_requests_waiting": ("aibrix:queue_size",),
    "kv_cache_usage_perc": ("aibrix:gpu_cache_usage_perc", "aibrix:kv_cache_usage_perc"),
    "prompt_tokens_total": ("aibrix:prompt_tokens_total",),
    "generation_tokens_total": ("aibrix:generation_tokens_total",),
    "time_to_first_token_seconds": ("aibrix:time_to_first_token_seconds",),
    "inter_token_latency_seconds": ("aibrix:time_per_output_token_seconds",),
    "e2e_request_latency_seconds": ("aibrix:e2e_request_latency_seconds",),
    "request_success_total": ("aibrix:request_success_total",),
    "gen_throughput": ("aibrix:generation_throughput",),
    "cache_hit_rate": ("aibrix:cache_hit_rate",),
    "token_usage": ("aibrix:token_usage",),
}


def profile_targets(profiles: tuple[str, ...], prefix: str) -> dict[str, tuple[str, ...]]:
    """concept -> the target names to publish it under, for the chosen profiles (in order, without repeats)."""
    tables: dict[str, Mapping[str, tuple[str, ...]]] = {
        "outrider": {c: (f"{prefix}:{c}",) for c in UNIFIED},
        "kthena": KTHENA,
        "aibrix": AIBRIX,
        "gie": {},  # not a rename table: built by outrider.metrics.gie
    }
    targets: dict[str, tuple[str, ...]] = {}
    for profile in profiles:
        for concept, names in tables[profile].items():
            merged = targets.get(concept, ()) + names
            targets[concept] = tuple(dict.fromkeys(merged))
    return targets
