"""The live objects of one running outrider, handed to the HTTP layer by the supervisor."""

from __future__ import annotations

import dataclasses

from outrider.metrics.own import OwnMetrics
from outrider.metrics.scraper import Scraper
from outrider.settings import Settings
from outrider.transfer.jobs import JobManager


@dataclasses.dataclass
class Runtime:
    settings: Settings
    metrics: OwnMetrics
    scraper: Scraper
    model: str | None = None  # the engine's served model name, from --model or asked of the engine
    downloads: JobManager | None = None  # model download jobs; started by the supervisor
