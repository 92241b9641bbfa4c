"""Shared test fixtures: the real engine pages, kept in the repository (tests/fixtures/engine-metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider import backoff
from outrider.backoff import StoreRetries
from outrider.sources import _common

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "tests" / "fixtures" / "engine-metrics"


def fixtures_dir() -> Path:
    """The engine pages served by real engines; SOURCES.md beside them says where each came from."""
    return PAGES


@pytest.fixture(scope="session")
def engine_pages() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(fixtures_dir().glob("*.prom"))}


@pytest.fixture
def fast_store_retries(monkeypatch: pytest.MonkeyPatch) -> StoreRetries:
    """Listings and HEADs retried twice at most, a millisecond apart, and a store's Retry-After honoured for 10 ms
    at most: for the tests of how a store's failures are mapped, which would otherwise wait out the real backoff
    (seconds) on every transient answer. The policy itself is tested with its real waits."""
    fast = StoreRetries(attempts=2, initial=0.001, cap=0.002)
    monkeypatch.setattr(_common, "STORE_RETRIES", fast)
    monkeypatch.setattr(backoff, "RETRY_AFTER_CAP", 0.01)
    return fast
