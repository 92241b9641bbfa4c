"""The scrape loop: fetch the engine page on a timer and keep the last good one, already rewritten for serving.

Requests never wait on the engine: `/metrics` reads `Scraper.snapshot`, a finished bytes object, and the age check
is one subtraction. A scrape that fails keeps the previous page; the page stops being served once it is older than
`max_age`, so a dead engine shows up as missing series rather than as frozen values.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import httpx
import trio

from outrider.metrics.own import OwnMetrics
from outrider.metrics.standardize import Rewriter

log = logging.getLogger(__name__)

# The text format (0.0.4), not OpenMetrics: SGLang answers OpenMetrics when asked for it, and mixing the two
# formats on one page would be invalid.
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
# An engine page is tens of kB; a page this large means something other than a metrics page answered.
MAX_PAGE_BYTES = 32 * 1024 * 1024
# How long a failure reason repeats in the log before it is reported again; a dead engine must not flood the log.
FAILURE_LOG_INTERVAL = 30.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    body: bytes  # the engine page plus unified families, ready to serve
    fetched_at: float  # trio.current_time() when it arrived
    max_lora: int | None = None  # the engine's adapters per batch, when its page tells (gie profile)


class ScrapeFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# A dataclass for its __init__ only (it keeps what it is given): one live object, compared by identity, with the
# plain repr. What it uses but does not show is passed through __post_init__ and kept private.
@dataclasses.dataclass(eq=False, repr=False, kw_only=True)
class Scraper:
    url: str
    interval: float
    timeout: float
    max_age: float
    rewriter: dataclasses.InitVar[Rewriter]
    metrics: dataclasses.InitVar[OwnMetrics]
    headers: dataclasses.InitVar[dict[str, str] | None] = None
    # Where the engine's metrics are now (outrider.target), read at every scrape; `url` when not given.
    follow: dataclasses.InitVar[Callable[[], str] | None] = None

    def __post_init__(
        self,
        rewriter: Rewriter,
        metrics: OwnMetrics,
        headers: dict[str, str] | None,
        follow: Callable[[], str] | None,
    ) -> None:
        self._follow = follow
        self._rewriter = rewriter
        self._metrics = metrics
        self._headers = {"Accept": ACCEPT, **(headers or {})}
        self.snapshot: Snapshot | None = None
        self.last_error: ScrapeFailed | None = None
        self._last_logged: tuple[str, float] | None = None

    # -- reading state (request path: cheap, no I/O) --

    def current_url(self) -> str:
        """The URL scraped now: the engine target's metrics URL, or `url`."""
        return self._follow() if self._follow is not None else self.url

    def age(self) -> float:
        """Seconds since the served page was fetched; infinite before the first good scrape."""
        if self.snapshot is None:
            return math.inf
        return trio.current_time() - self.snapshot.fetched_at

    def fresh_page(self) -> bytes | None:
        if self.snapshot is None or self.age() > self.max_age:
            return None
        return self.snapshot.body

    def not_ready_reason(self) -> str | None:
        """Why the engine should not receive traffic, or None when it is fine."""
        if self.last_error is not None and self.last_error.reason == "connect":
            return f"engine unreachable at {self.current_url()}: {self.last_error}"
        if self.snapshot is None:
            if self.last_error is not None:
                return f"no engine metrics yet from {self.current_url()}: {self.last_error}"
            return f"no engine metrics yet from {self.current_url()}"
        age = self.age()
        if age > self.max_age:
            why = f"; last scrape: {self.last_error}" if self.last_error else ""
            return f"engine metrics are stale ({age:.1f}s old, limit {self.max_age:g}s){why}"
        return None

    def update_gauges(self) -> None:
        """Bring the time-dependent gauges up to date; called just before rendering."""
        age = self.age()
        self._metrics.page_age.set(-1 if math.isinf(age) else age)
        self._metrics.page_served.set(0 if age > self.max_age else 1)

    # -- the loop --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scrape every `interval` seconds (start to start) until cancelled. Never raises but Cancelled."""
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=self._headers) as client:
            task_status.started()
            while True:
                started = trio.current_time()
                await self.scrape_once(client)
                await trio.sleep_until(started + self.interval)

    async def scrape_once(self, client: httpx.AsyncClient) -> None:
        metrics = self._metrics
        metrics.scrapes.inc()
        started = trio.current_time()
        try:
            with trio.fail_after(self.timeout):
                page = await self._fetch(client)
            # Off the event loop: a large page (a 22 MB one took 0.35-1.2 s) would hold /health and every request.
            rewritten = await trio.to_thread.run_sync(self._rewriter.rewrite_page, page)
        except ScrapeFailed as exc:
            self._failed(exc)
        except trio.TooSlowError:
            self._failed(ScrapeFailed("timeout", f"no answer within {self.timeout:g}s"))
        except Exception as exc:  # the loop owns its failures: record, keep the last page, go on
            self._failed(ScrapeFailed("protocol", f"{type(exc).__name__}: {exc}"), unexpected=exc)
        else:
            self.snapshot = Snapshot(rewritten.text.encode(), trio.current_time(), rewritten.max_lora)
            if self.last_error is not None:
                log.info("engine metrics at %s are back", self.current_url())
            self.last_error = None
            self._last_logged = None
            metrics.engine_up.set(1)
        finally:
            metrics.scrape_duration.observe(trio.current_time() - started)

    async def _fetch(self, client: httpx.AsyncClient) -> str:
        try:
            async with client.stream("GET", self.current_url()) as response:
                if response.status_code != 200:
                    raise ScrapeFailed("http_status", f"engine answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_PAGE_BYTES:
                        raise ScrapeFailed("invalid_page", f"page larger than {MAX_PAGE_BYTES} bytes")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise ScrapeFailed("timeout", f"no answer within {self.timeout:g}s") from None
        except httpx.ConnectError as exc:
            raise ScrapeFailed("connect", _short(exc)) from None
        except httpx.HTTPError as exc:
            raise ScrapeFailed("protocol", _short(exc)) from None
        try:
            page = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise ScrapeFailed("invalid_page", "page is not UTF-8 text") from None
        if not page.strip():
            raise ScrapeFailed("invalid_page", "engine answered an empty page")
        return page

    def _failed(self, exc: ScrapeFailed, unexpected: Exception | None = None) -> None:
        """Record a failed scrape; its reason is logged at most once per FAILURE_LOG_INTERVAL, with the traceback
        of an `unexpected` error (a bug: an error, but one page per scrape must not flood the log either)."""
        self.last_error = exc
        self._metrics.engine_up.set(0)
        self._metrics.scrape_failures.labels(exc.reason).inc()
        now = trio.current_time()
        # A bug's message may name what changes from page to page: its type is the same bug.
        key = f"{exc.reason}:{exc}" if unexpected is None else f"{exc.reason}:{type(unexpected).__qualname__}"
        if (
            self._last_logged is None
            or self._last_logged[0] != key
            or now - self._last_logged[1] > FAILURE_LOG_INTERVAL
        ):
            level = logging.WARNING if unexpected is None else logging.ERROR
            log.log(level, "scrape of %s failed (%s): %s", self.current_url(), exc.reason, exc, exc_info=unexpected)
            self._last_logged = (key, now)


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
