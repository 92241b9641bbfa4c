"""outrider's own metrics, in a registry of their own.

A private registry with no default collectors: the engine's page already carries `process_*` and `python_*`
families (vLLM's do), and serving ours beside them would make duplicate families on one page.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest

from outrider import __version__
from outrider.metrics.families import SUB_SECOND, Families

# Scrape failure reasons: a small closed set, so the label cannot grow without bound.
FAILURE_REASONS = ("timeout", "connect", "http_status", "protocol", "invalid_page")
# Adapter reconcile failure reasons, closed for the same reason.
RECONCILE_ERROR_REASONS = ("engine_unavailable", "engine_refused", "fetch", "cleanup", "internal")
# Download failure reasons: closed, like the scrape ones; `download_failure_reason` maps errors onto them.
DOWNLOAD_FAILURE_REASONS = (
    "source_not_found",
    "access_denied",
    "invalid_source",
    "source_unavailable",
    "verification_failed",
    "insufficient_storage",
    "local_io",
    "internal",
)
# Engine process phases (lifecycle/records.py), all present from the start so that a phase's count reads 0, not absent.
ENGINE_PHASES = ("downloading", "booting", "active", "sleeping", "stopping", "failed")
# How an activation ended: closed, like the other reasons.
ACTIVATION_RESULTS = ("success", "failed", "cancelled")


class OwnMetrics:
    def __init__(self, engine: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        new = Families(self.registry)
        self.engine_up = new.gauge("outrider_engine_up", "1 when the last engine scrape succeeded, else 0.")
        self.scrape_duration = new.histogram(
            "outrider_scrape_duration_seconds", "Time taken by engine metric scrapes, successful or not.", SUB_SECOND
        )
        self.scrape_failures = new.counter(
            "outrider_scrape_failures", "Engine scrapes that failed, by reason.", reason=FAILURE_REASONS
        )
        self.scrapes = new.counter("outrider_scrapes", "Engine scrapes attempted.")
        self.page_age = new.gauge(
            "outrider_engine_page_age_seconds",
            "Seconds since the engine page being served was fetched (-1 before the first good scrape).",
        )
        self.page_age.set(-1)
        self.page_served = new.gauge(
            "outrider_engine_page_served",
            "1 when /metrics includes the engine page, 0 when it is missing or older than --metrics-max-age.",
        )
        # No values up front: the reconciler sets every state's count when it starts.
        self.adapters = new.gauge("outrider_adapters", "Declared LoRA adapters by state.", state=())
        self.adapter_load_seconds = new.histogram(
            "outrider_adapter_load_seconds",
            "Time from starting an adapter's fetch to the engine confirming its load.",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        )
        self.adapter_unload_seconds = new.histogram(
            "outrider_adapter_unload_seconds", "Time the engine took to unload an adapter.", SUB_SECOND
        )
        self.adapter_reconcile_errors = new.counter(
            "outrider_adapter_reconcile_errors",
            "Failures met while making the engine's adapters match the declared set, by reason.",
            reason=RECONCILE_ERROR_REASONS,
        )
        self.downloads = DownloadMetrics(self.registry)
        self.pod_model = PodModelMetrics(self.registry)
        self.engines = EngineMetrics(self.registry)
        self.http = HttpMetrics(self.registry)
        Info("outrider_build", "outrider build information.", registry=self.registry).info(
            {"version": __version__, "engine": engine}
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DownloadMetrics:
    """Model download counters, registered in outrider's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        new = Families(registry)
        self.bytes = new.counter("outrider_download_bytes", "Bytes received from stores by downloads.")
        self.files = new.counter("outrider_download_files", "Files verified and published by downloads.")
        self.duration = new.histogram(
            "outrider_download_duration_seconds",
            "Wall time of download jobs that completed.",
            (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
        )
        self.failures = new.counter(
            "outrider_download_failures", "Download jobs that failed, by reason.", reason=DOWNLOAD_FAILURE_REASONS
        )
        self.active = new.gauge("outrider_download_jobs_active", "Download jobs queued or running.")


# The pod model's states (transfer/pod_model.py), all present from the start so that each reads 0 or 1.
POD_MODEL_STATES = ("none", "downloading", "ready", "failed")


class PodModelMetrics:
    """The pod's own model (--pod-model), fetched at start-up: where it stands, for dashboards and alerts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        new = Families(registry)
        self.state = new.gauge(
            "outrider_pod_model_state", "1 for the pod model's state, else 0.", state=POD_MODEL_STATES
        )
        self.bytes_done = new.gauge(
            "outrider_pod_model_bytes_done", "Bytes of the pod model on disk (verified or not)."
        )
        self.bytes_total = new.gauge("outrider_pod_model_size_bytes", "Bytes of the pod model in all.")
        self.files_done = new.gauge("outrider_pod_model_files_done", "Files of the pod model published.")
        self.files_total = new.gauge("outrider_pod_model_files", "Files of the pod model in all.")
        self.rate = new.gauge(
            "outrider_pod_model_rate_bytes_per_second", "Mean rate of the pod model's download while it runs."
        )

    def update(
        self, *, state: str, bytes_done: int, bytes_total: int, files_done: int, files_total: int, rate: float
    ) -> None:
        for name in POD_MODEL_STATES:
            self.state.labels(name).set(1 if name == state else 0)
        self.bytes_done.set(bytes_done)
        self.bytes_total.set(bytes_total)
        self.files_done.set(files_done)
        self.files_total.set(files_total)
        self.rate.set(rate)


class EngineMetrics:
    """Engines outrider launched (the engine lifecycle): processes by phase, activations and how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        new = Families(registry)
        self.processes = new.gauge(
            "outrider_engine_processes", "Engines outrider supervises, by phase.", phase=ENGINE_PHASES
        )
        self.activations = new.counter(
            "outrider_engine_activations",
            "Engine activations that ended, by result (failed: fetch, launch, exit or timeout before serving).",
            result=ACTIVATION_RESULTS,
        )
        self.exits = new.counter(
            "outrider_engine_exits", "Engines that exited after they had served, without being asked to stop."
        )
        self.activation_duration = new.histogram(
            "outrider_engine_activation_duration_seconds",
            "Time from an activation request to the engine answering /health (artifact fetch and start-up).",
            (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
        )

    def set_phases(self, counts: dict[str, int]) -> None:
        for phase in ENGINE_PHASES:
            self.processes.labels(phase).set(counts.get(phase, 0))


# API request methods counted by name; any other method is counted as `other`, so clients cannot grow the label.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
# From a cached probe answer (~0.1 ms) to a `wait: true` adapter load (tens of seconds).
HTTP_DURATION_BUCKETS = (0.0005, *SUB_SECOND, 10.0, 30.0)


class HttpMetrics:
    """API requests, counted by the request middleware (http/observe.py). `route` is a route template in OpenAPI
    spelling (`/v1/adapters/{name}`) or `unmatched`, never a raw path; `method` is one of HTTP_METHODS or `other`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "outrider_http_requests",
            "API requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "outrider_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route template.",
            ["method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )


def download_failure_reason(error: Exception | None) -> str:
    """The closed-set label for a failed download's error (by its `type`, never its message)."""
    kind = getattr(error, "type", None)
    mapping = {
        "source_not_found": "source_not_found",
        "not_found": "source_not_found",
        "source_access_denied": "access_denied",
        "invalid_source": "invalid_source",
        "invalid_request": "invalid_source",
        "source_unavailable": "source_unavailable",
        "source_error": "source_unavailable",
        "verification_failed": "verification_failed",
        "insufficient_storage": "insufficient_storage",
        "local_io_error": "local_io",
    }
    return mapping.get(str(kind), "internal")
