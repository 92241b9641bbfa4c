"""The pod's own model: fetched once at start-up, before the engine starts, and the state a startup probe reads.

`outrider serve --pod-model SOURCE` fetches SOURCE into `<model-root>/<--pod-model-dir>` through the same download
jobs as every other download: parallel ranged reads, resume, verification, atomic publish, and the destination's
lock (lock.py), so the pods of one node or one ReadWriteMany volume fetch it once between them and the others use
the copy. `GET /startup` answers 503 with the progress until every file is published, then 200; a Kubernetes
native sidecar's startupProbe on it holds the engine container back until its model is complete on disk.

A failure the store may get over (it is unavailable, throttling, resetting) is tried again, up to ATTEMPTS times
with a growing pause; any other (no such source, access denied, bad bytes, no space) fails for good at once. A
failed pod model stays failed, and says why, until outrider restarts (the kubelet restarts a sidecar whose
startupProbe keeps failing, and the restart resumes from the part files).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import trio

from outrider.errors import OutriderError
from outrider.metrics.own import PodModelMetrics
from outrider.sources import parse_source
from outrider.transfer.jobs import DownloadRequest, Job, JobManager
from outrider.transfer.paths import confine_off_loop

log = logging.getLogger(__name__)

# Error types (errors.py) that a later attempt may not meet: the store was unavailable or cut the connection.
RETRIED_ERRORS = frozenset({"source_unavailable", "source_error"})
ATTEMPTS = 3
RETRY_PAUSE = 5.0  # seconds before the second attempt; doubled before each later one
# How often the progress gauges follow the job (Prometheus scrapes every 15-30 s; this costs a few sums).
METRICS_INTERVAL = 1.0


def default_dir(source: str) -> str:
    """The directory a source lands in when --pod-model-dir is not given: its last path part (or repo name)."""
    ref = parse_source(source)
    return ref.display.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]


@dataclasses.dataclass(eq=False)
class PodModel:
    """The pod model's download and its state, one of POD_MODEL_STATES: `none` (no pod model), `downloading`,
    `ready` or `failed`."""

    jobs: JobManager
    model_root: str
    source: str | None
    directory: str | None = None
    metrics: PodModelMetrics | None = None
    state: str = "none"
    dest: Path | None = None
    job: Job | None = None
    error: OutriderError | None = None
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.source is not None:
            self.state = "downloading"
            self.directory = self.directory or default_dir(self.source)
        self._publish_metrics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch the pod model (when there is one) and then return; the loop owns its failures."""
        task_status.started()
        if self.source is None:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_metrics)
            try:
                await self._fetch()
            finally:
                nursery.cancel_scope.cancel()
        self._publish_metrics()

    async def _fetch(self) -> None:
        assert self.source is not None and self.directory is not None
        try:
            self.dest = await confine_off_loop(self.model_root, self.directory, "pod_model_dir")
        except OutriderError as exc:
            self._fail(exc)
            return
        pause = RETRY_PAUSE
        while True:
            self.attempts += 1
            try:
                self.job = await self.jobs.submit(DownloadRequest(source=self.source, dest=self.dest))
                await self.job.done.wait()
            except OutriderError as exc:  # refused before any job (no such source, no space, ...)
                error: OutriderError | None = exc
            else:
                if self.job.state == "completed":
                    self.state, self.error = "ready", None
                    log.info("pod model %s is complete in %s", self.job.source, self.dest)
                    return
                error = self.job.error or OutriderError(f"the download ended {self.job.state}")
            assert error is not None
            if error.type not in RETRIED_ERRORS or self.attempts >= ATTEMPTS:
                self._fail(error)
                return
            log.warning("pod model: attempt %d failed (%s); trying again in %.0fs", self.attempts, error.message, pause)
            await trio.sleep(pause)
            pause *= 2

    def _fail(self, error: OutriderError) -> None:
        self.state, self.error = "failed", error
        log.error("pod model %s: failed for good: %s", self.source, error.message)

    async def _follow_metrics(self) -> None:
        while True:
            self._publish_metrics()
            await trio.sleep(METRICS_INTERVAL)

    def _publish_metrics(self) -> None:
        if self.metrics is None:
            return
        progress = self.job.progress if self.job is not None else None
        files = list(progress.files.values()) if progress is not None else []
        self.metrics.update(
            state=self.state,
            bytes_done=progress.done if progress else 0,
            bytes_total=progress.total if progress else 0,
            files_done=sum(1 for f in files if f.state in ("published", "unchanged")),
            files_total=len(files),
            rate=progress.rate() if progress and self.state == "downloading" else 0.0,
        )

    @property
    def ready(self) -> bool:
        return self.state in ("none", "ready")

    def to_json(self) -> dict[str, Any]:
        """The /startup answer's body."""
        body: dict[str, Any] = {
            "status": "ready" if self.state == "none" else self.state,
            "source": self.job.source if self.job is not None else (self.source and parse_source(self.source).display),
            "model_dir": None if self.dest is None else str(self.dest),
        }
        if self.job is not None:
            job = self.job.to_json()
            for key in ("bytes_done", "bytes_total", "rate_bytes_per_second", "waiting_for"):
                body[key] = job[key]
            body["files_done"] = sum(1 for f in job["files"] if f["state"] in ("published", "unchanged"))
            body["files_total"] = len(job["files"])
        if self.error is not None:
            body["error"] = self.error.to_json()["error"]
        return body
