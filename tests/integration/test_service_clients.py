"""The httpx clients outrider holds are closed however serve ends, a loop failing at start included."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from outrider import service
from outrider.engines.client import EngineClient
from tests.fakes.engine import FakeEngine
from tests.integration.lifecycle_fixtures import lifecycle_settings, outrider_settings


class Recorded(EngineClient):
    """The real client, remembered so the test can look at it once serve is over."""

    made: list[Recorded] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        Recorded.made.append(self)


async def test_a_failure_at_start_still_closes_the_engine_clients(
    tmp_path: Path, vllm_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "EngineClient", Recorded)
    Recorded.made.clear()
    (tmp_path / "state").write_text("a file where the engine records' directory must be")
    settings = outrider_settings(tmp_path, vllm_engine.base_url)

    with pytest.raises(BaseExceptionGroup) as failed:  # the lifecycle cannot keep its records: serve fails
        await service.serve(settings, trio.Event(), lifecycle=lifecycle_settings(tmp_path))

    assert failed.group_contains(OSError)
    (client,) = Recorded.made
    assert client._http.is_closed
