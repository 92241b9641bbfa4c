"""The live objects of one running outrider, handed to the HTTP layer by the supervisor."""

from __future__ import annotations

import dataclasses

from outrider.adapters.file import AdaptersFileWatcher
from outrider.adapters.reconciler import Reconciler
from outrider.lifecycle.supervisor import Supervisor
from outrider.metrics.own import OwnMetrics
from outrider.metrics.page import ServedPage
from outrider.metrics.scraper import Scraper
from outrider.settings import Settings
from outrider.target import TargetKeeper
from outrider.transfer.jobs import JobManager
from outrider.transfer.pod_model import PodModel


@dataclasses.dataclass
class Runtime:
    settings: Settings
    metrics: OwnMetrics
    scraper: Scraper
    page: ServedPage
    target: TargetKeeper  # the engine outrider talks to now: read it, never write it (outrider/target.py)
    adapters: Reconciler | None = None  # the declared LoRA set and the loop that keeps the engine on it
    adapters_file: AdaptersFileWatcher | None = None
    downloads: JobManager | None = None  # model download jobs; started by the supervisor
    pod_model: PodModel | None = None  # the pod's own model, fetched at start-up (None: not built yet)
    engines: Supervisor | None = None  # engine processes outrider launches (None: the lifecycle is off)

    @property
    def model(self) -> str | None:
        """The engine target's served model name (from --model, the launched engine's name, or asked of it)."""
        return self.target.current.model
