"""The body `GET /metrics` answers: the fresh engine page (rewritten) followed by outrider's own metrics.

Rendering outrider's own registry costs about 0.3 ms, several times the rest of a request, so the composed body
is reused for up to `REFRESH` seconds, and rebuilt at once when a new engine page arrives or the page it holds
reaches `--metrics-max-age` (a cached body never serves an engine page past its expiry). The time-dependent
gauges (page age, page served) are therefore at most `REFRESH` old, far below any scrape interval.

With the `gie` profile on an engine that has no LoRA family of its own, `vllm:lora_requests_info` is added here,
from the adapter set as it is at that moment, so a load or unload shows within `REFRESH` rather than at the next
scrape; formatting its one line is nothing beside rendering outrider's own registry.

Prometheus asks for gzip; the compressed body is made once per composed body (level 1: about 6x smaller for a
fraction of a millisecond), so a scrape costs no compression and sends a sixth of the bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import trio

from outrider.metrics.gie import AdapterLoraInfo
from outrider.metrics.own import OwnMetrics
from outrider.metrics.scraper import Scraper, Snapshot

REFRESH = 0.1


class ServedPage:
    def __init__(
        self,
        scraper: Scraper,
        own: OwnMetrics,
        refresh: float = REFRESH,
        lora: AdapterLoraInfo | None = None,
        peer: Callable[[], bytes] | None = None,
    ) -> None:
        self._scraper = scraper
        self._own = own
        # Families in a peer's own names (AIBrix's aibrix:modelclaim_*), served between the engine page and
        # outrider's own families: colons mark them as the peer's, which outrider's own names never carry.
        self._peer = peer
        self._lora = lora
        self._refresh = refresh
        self._body = b""
        self._gzipped: bytes | None = None
        self._valid_until = -float("inf")
        self._snapshot: Snapshot | None = None

    def gzip_body(self) -> bytes:
        body = self.body()
        if self._gzipped is None:
            self._gzipped = gzip.compress(body, compresslevel=1, mtime=0)
        return self._gzipped

    def body(self) -> bytes:
        now = trio.current_time()
        snapshot = self._scraper.snapshot
        if snapshot is not self._snapshot or now >= self._valid_until:
            self._scraper.update_gauges()
            page = self._scraper.fresh_page()
            if page is not None and snapshot is not None and self._lora is not None:
                page += self._lora.render(snapshot.max_lora).encode()
            own = (self._peer() if self._peer is not None else b"") + self._own.render()
            self._body = own if page is None else page + own
            self._gzipped = None
            self._valid_until = now + self._refresh
            if page is not None and snapshot is not None:
                self._valid_until = min(self._valid_until, snapshot.fetched_at + self._scraper.max_age)
            self._snapshot = snapshot
        return self._body
