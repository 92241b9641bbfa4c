"""outrider's own metrics, in a registry of their own.

A private registry with no default collectors: the engine's page already carries `process_*` and `python_*`
families (vLLM's do), and serving ours beside them would make duplicate families on one page.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from outrider import __version__

# Scrape failure reasons: a small closed set, so the label cannot grow without bound.
FAILURE_REASONS = ("timeout", "connect", "http_status", "protocol", "invalid_page")
# Adapter reconcile failure reasons, closed for the same reason.
RECONCILE_ERROR_REASONS = ("engine_unavailable", "engine_refused", "fetch", "internal")


class OwnMetrics:
    def __init__(self, engine: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.engine_up = Gauge("outrider_engine_up", "1 when the last engine scrape succeeded, else 0.", registry=r)
        self.scrape_duration = Histogram(
            "outrider_scrape_duration_seconds",
            "Time taken by engine metric scrapes, successful or not.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.scrape_failures = Counter(
            "outrider_scrape_failures", "Engine scrapes that failed, by reason.", ["reason"], registry=r
        )
        for reason in FAILURE_REASONS:
            self.scrape_failures.labels(reason)  # present at 0 from the start, so rate() works at once
        self.scrapes = Counter("outrider_scrapes", "Engine scrapes attempted.", registry=r)
        self.page_age = Gauge(
            "outrider_engine_page_age_seconds",
            "Seconds since the engine page being served was fetched (-1 before the first good scrape).",
            registry=r,
        )
        self.page_age.set(-1)
        self.page_served = Gauge(
            "outrider_engine_page_served",
            "1 when /metrics includes the engine page, 0 when it is missing or older than --metrics-max-age.",
            registry=r,
        )
        self.adapters = Gauge(
            "outrider_adapters", "Declared LoRA adapters by state.", ["state"], registry=r
        )  # the states are set for all at start by the reconciler
        self.adapter_load_seconds = Histogram(
            "outrider_adapter_load_seconds",
            "Time from starting an adapter's fetch to the engine confirming its load.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.adapter_unload_seconds = Histogram(
            "outrider_adapter_unload_seconds",
            "Time the engine took to unload an adapter.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.adapter_reconcile_errors = Counter(
            "outrider_adapter_reconcile_errors",
            "Failures met while making the engine's adapters match the declared set, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in RECONCILE_ERROR_REASONS:
            self.adapter_reconcile_errors.labels(reason)
        Info("outrider_build", "outrider build information.", registry=r).info(
            {"version": __version__, "engine": engine}
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
