"""Download jobs: one per destination, run in the service's root nursery, with progress, cancel and de-duplication.

`JobManager.run` is a long-lived loop started with `nursery.start`; each job runs in its nursery and owns its
failures (recorded on the job, never raised into the nursery). `submit` does the request-time work in threads
(open the source, list it, compare with the destination, check free space) so that a bad request is answered
with its own 4xx before any job exists. Two requests for the same destination share one job when they ask for the
same source and filters; a different one while the first is active is a 409 (overlapping destinations count).

Who keeps a job alive: a job asked for through `submit` (the HTTP routes) is a public resource, listed and polled by
id, so it runs to its end whoever waits for it. A job asked for only through `fetch` (LoRA adapters) exists for its
waiters: when the last of them is cancelled, the job is cancelled too, rather than download on for nobody.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from outrider.errors import Conflict, NotFound, OutriderError
from outrider.metrics.own import DownloadMetrics, download_failure_reason
from outrider.transfer import download
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.opener import SourceOpener
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from outrider.transfer.settings import DownloadSettings

log = logging.getLogger(__name__)

# A job is queued, running, then completed, failed or cancelled.
ACTIVE_STATES = ("queued", "running")
# Finished jobs kept for GET /v1/downloads; older ones are forgotten (their directories keep their records).
FINISHED_JOBS_KEPT = 200
# Opening and listing sources for requests: not under the ranged-read limiter, so a busy download cannot make a
# new request wait for a slot just to be validated.
CONTROL_THREADS = 4


@dataclasses.dataclass(frozen=True)
class DownloadRequest:
    source: str
    dest: Path  # already confined to the model root
    config: Mapping[str, object] | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    workers: int | None = None
    chunk_size: int | None = None
    suffixes: tuple[str, ...] | None = None  # None: the operator's allow-list (--allow-file-suffix)
    dest_field: str = "dest"  # what the request calls `dest`, for the errors about it


# The jobs one `fetch` call waits for (`list` inside JobManager names its method, not the type).
Waiting = list["Job"]


def _iso(ts: float | None) -> str | None:
    return (
        None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
    )


@dataclasses.dataclass(eq=False)
class Job:
    id: str
    source: str  # the display form: no credentials
    revision: str | None
    dest: Path
    filters: Filters
    progress: Progress
    state: str = "queued"
    error: OutriderError | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancel_scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    # `fetch` calls waiting for the job now, and whether a `submit` (which does not wait) asked for it too.
    waiters: int = 0
    submitted: bool = False
    # Cancelled because its last waiter went away: a `fetch` that joined it meanwhile starts a new one.
    abandoned: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        return {
            "id": self.id,
            "state": self.state,
            "source": self.source,
            "revision": self.revision,
            "dest": str(self.dest),
            "include": list(self.filters.include),
            "exclude": list(self.filters.exclude),
            "bytes_done": p.done,
            "bytes_total": p.total,
            "bytes_fetched": p.fetched,
            "rate_bytes_per_second": round(p.rate(), 1) if self.started_at else 0.0,
            "eta_seconds": None if not self.active or self.started_at is None else _round(p.eta()),
            "waiting_for": p.waiting_for if self.active else None,
            "files": [f.to_json() for f in p.files.values()],
            "error": None if self.error is None else self.error.to_json()["error"],
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


class JobManager:
    """Owns every download job of the process and the limiters they share."""

    def __init__(
        self,
        settings: DownloadSettings,
        opener: SourceOpener,
        metrics: DownloadMetrics | None = None,
        options: TransferOptions | None = None,
    ) -> None:
        self.settings = settings
        self.opener = opener
        self.metrics = metrics
        self.transfer = Transfer(
            options
            or TransferOptions(
                workers=settings.workers, chunk_size=settings.chunk_size, verify_checksums=settings.verify_checksums
            )
        )
        self._control = trio.CapacityLimiter(CONTROL_THREADS)
        self._jobs: dict[str, Job] = {}
        self._nursery: trio.Nursery | None = None
        self._ids = itertools.count(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the jobs' nursery until cancelled (shutdown); jobs then stop, keeping their parts for a resume."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for job in self._jobs.values():
                    job.stop.set()  # threads that are not abandoned notice between pieces

    # -- queries ---------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no download job {job_id!r}", field="id")
        return job

    def list(self) -> list[Job]:
        return list(self._jobs.values())

    # -- commands --------------------------------------------------------------------------------------------

    async def submit(self, request: DownloadRequest) -> Job:
        """Validate, plan and start a download (or join the identical one in progress); returns its job, which
        runs to its end whatever happens to this call."""
        return await self._submit(request, None)

    async def _submit(self, request: DownloadRequest, waiting: Waiting | None) -> Job:
        """`submit`; with `waiting`, the caller is counted as a waiter of the job (and the job appended to
        `waiting`) at the moment it is joined or created, with no await in between, so that a cancel at any later
        point finds the waiter to remove."""
        if self._nursery is None:
            raise OutriderError("the download service is not running")
        suffixes = self.settings.allow_suffixes if request.suffixes is None else request.suffixes
        filters = Filters(suffixes, request.include, request.exclude)
        source = await trio.to_thread.run_sync(self.opener, request.source, request.config, limiter=self._control)
        try:
            joined = self._join_or_refuse(request.dest, source.display, filters)
            if joined is not None:
                self._hold(joined, waiting)
                await trio.to_thread.run_sync(source.close, limiter=self._control)
                return joined
            chunk_size = request.chunk_size or self.transfer.options.chunk_size
            prepared = await trio.to_thread.run_sync(
                functools.partial(download.prepare, dest_field=request.dest_field),
                source,
                filters,
                request.dest,
                chunk_size,
                limiter=self._control,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(source.close, limiter=self._control)
            raise
        # No await between this check and the insertion: two requests cannot both pass it.
        joined = self._join_or_refuse(request.dest, source.display, filters)
        if joined is not None:
            self._hold(joined, waiting)
            await trio.to_thread.run_sync(source.close, limiter=self._control)
            return joined
        progress = Progress(self.metrics.bytes.inc if self.metrics else None)
        job = Job(
            id=f"dl-{next(self._ids)}-{secrets.token_hex(3)}",
            source=source.display,
            revision=source.revision,
            dest=request.dest,
            filters=filters,
            progress=download.progress_for(prepared, progress),
        )
        self._jobs[job.id] = job
        self._hold(job, waiting)
        self._forget_old()
        if prepared.record.complete:  # asked again for what is already here and current: nothing to do
            job.state = "completed"
            job.started_at = job.finished_at = time.time()
            job.progress.finished = time.monotonic()
            job.done.set()
            await trio.to_thread.run_sync(source.close, limiter=self._control)
            return job
        if self.metrics:
            self.metrics.active.inc()
        self._nursery.start_soon(self._run_job, job, prepared, request)
        return job

    async def fetch(self, source: str, config: Mapping[str, object] | None, dest: Path) -> Path:
        """Download `source` into `dest` and return `dest` once every file is verified and published; raises the
        job's error otherwise. This is how LoRA adapters that are not on the shared volume arrive (`dest` is
        confined by the caller). A `max_workers` key in `config` (Kthena's field) sets the job's workers."""
        options = dict(config or {})
        workers = options.pop("max_workers", None)
        request = DownloadRequest(
            source=source,
            dest=dest,
            config=options or None,
            workers=workers if isinstance(workers, int) and not isinstance(workers, bool) else None,
        )
        while True:
            waiting: Waiting = []
            try:
                job = await self._submit(request, waiting)
                await job.done.wait()
            finally:
                for held in waiting:
                    self._release(held)
            if not (job.state == "cancelled" and job.abandoned):
                break
            # Joined a job whose waiters had all gone and which was winding down (its parts are removed by now):
            # this caller still wants the files, so it asks again.
        if job.state != "completed":
            # A clone for each waiter: one object raised in several tasks splices their tracebacks, and a caller
            # renaming its field would rename the job's.
            raise (job.error.clone() if job.error else OutriderError(f"download of {job.source} ended {job.state}"))
        return dest

    def _join_or_refuse(self, dest: Path, display: str, filters: Filters) -> Job | None:
        for job in self._jobs.values():
            if not job.active or not _overlap(job.dest, dest):
                continue
            if job.dest == dest and job.source == display and job.filters == filters:
                return job
            raise Conflict(
                f"a download of {job.source} into {job.dest} is in progress (job {job.id}); "
                "wait for it or cancel it first",
                field="dest",
            )
        return None

    def _hold(self, job: Job, waiting: Waiting | None) -> None:
        if waiting is None:
            job.submitted = True
        else:
            job.waiters += 1
            waiting.append(job)

    def _release(self, job: Job) -> None:
        """A `fetch` stops waiting for `job` (it returned, or it was cancelled): the last one out cancels a job
        nobody else asked for, which would otherwise download on, and hold its slots, for no one."""
        job.waiters -= 1
        if job.waiters == 0 and not job.submitted and job.active:
            log.info("download %s of %s: every caller has gone; cancelling it", job.id, job.source)
            job.abandoned = True
            self._stop(job)

    def cancel(self, job_id: str) -> Job:
        """Stop a job promptly; its part files are removed. A finished job is returned unchanged."""
        job = self.get(job_id)
        self._stop(job)
        return job

    def _stop(self, job: Job) -> None:
        if job.active:
            job.stop.set()
            job.cancel_scope.cancel()

    # -- the job itself --------------------------------------------------------------------------------------

    async def _run_job(self, job: Job, prepared: download.Prepared, request: DownloadRequest) -> None:
        """Run one job to its end; every failure is recorded on the job (the loop owns its failures)."""
        job.state = "running"
        job.started_at = time.time()
        job.progress.started = time.monotonic()
        try:
            with job.cancel_scope:
                await download.run(
                    prepared,
                    self.transfer,
                    job.progress,
                    job.stop,
                    workers=request.workers,
                    chunk_size=request.chunk_size,
                    # A cancel of this job (not a shutdown) removes what the job wrote, under the destination's
                    # lock: a job that only waited for another process removes nothing.
                    discard_on_cancel=lambda: job.cancel_scope.cancel_called,
                )
                job.state = "completed"
            if job.cancel_scope.cancelled_caught:
                job.state = "cancelled"
        except OutriderError as exc:
            job.state, job.error = "failed", exc
            log.warning("download %s of %s into %s failed: %s", job.id, job.source, job.dest, exc.message)
        except Exception as exc:
            job.state = "failed"
            job.error = OutriderError("internal error during the download; see the outrider log")
            log.error("download %s failed unexpectedly", job.id, exc_info=exc)
        finally:
            job.finished_at = time.time()
            job.progress.finished = time.monotonic()
            self._account(job)
            job.done.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(prepared.source.close, limiter=self._control)

    def _account(self, job: Job) -> None:
        if self.metrics is None:
            return
        self.metrics.active.dec()
        self.metrics.files.inc(sum(1 for f in job.progress.files.values() if f.state == "published"))
        if job.state == "completed":
            self.metrics.duration.observe(job.progress.elapsed())
        elif job.state == "failed":
            self.metrics.failures.labels(download_failure_reason(job.error)).inc()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if not j.active]
        for job in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[job.id]
