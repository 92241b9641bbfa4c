"""The AIBrix runtime's own surface beyond LoRA (issue #25): `/metrics/`, where AIBrix serves its page (its
`/metrics` redirects there), and a deactivation with a mode other than "stop" (AIBrix's unit test sends "pause"),
over real sockets with the stand-in engine as the launched program."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.fakes.engine import FakeEngine
from tests.integration.conftest import start_outrider
from tests.integration.lifecycle_fixtures import (
    group_gone,
    lifecycle_settings,
    listed,
    make_artifact,
    outrider_settings,
)

TOKEN = "surface-test-token-0123456789"


async def test_metrics_with_a_trailing_slash_is_the_page(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """A scrape config written for AIBrix (`metrics_path: /metrics/`): AIBrix 200 with its page, outrider 404."""
    o = await start_outrider(nursery, outrider_settings(tmp_path, vllm_engine.base_url))

    slash = await o.client.get("/metrics/")
    plain = await o.client.get("/metrics")

    assert slash.status_code == 200, slash.text
    assert slash.headers["content-type"] == plain.headers["content-type"]
    assert "outrider_engine_up" in slash.text and "vllm:" in slash.text


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
async def test_protected_metrics_protect_both_spellings(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine, path: str
) -> None:
    settings = outrider_settings(tmp_path, vllm_engine.base_url, api_token=SecretStr(TOKEN), protect_metrics=True)
    o = await start_outrider(nursery, settings)

    assert (await o.client.get(path)).status_code == 401
    assert (await o.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


async def test_deactivate_with_mode_pause_stops_the_engine(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """AIBrix takes any `mode` and stops (its unit test sends "pause"): 200 and the engine gone; outrider 400."""
    o = await start_outrider(
        nursery, outrider_settings(tmp_path, vllm_engine.base_url), lifecycle=lifecycle_settings(tmp_path)
    )
    artifact = make_artifact(tmp_path / "models" / "tiny")
    started = await o.client.post(
        "/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": str(artifact)}, timeout=30
    )
    assert started.status_code == 200, started.text
    record = o.runtime.engines.get("tiny") if o.runtime.engines else None
    assert record is not None and record.pid is not None

    gone = await o.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny", "mode": "pause"})

    assert (gone.status_code, gone.json()) == (200, {"status": "success"})
    assert group_gone(record.pid)
    assert await listed(o.client) == {}
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{started.json()['port']}") as engine:
            await engine.get("/health", timeout=2)


def _samples(page: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in text_string_to_metric_families(page):
        for s in metric.samples:
            if s.name == family:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_modelclaim_families_for_aibrix_dashboard(
    nursery: trio.Nursery, tmp_path: Path, vllm_engine: FakeEngine
) -> None:
    """AIBrix's ModelClaim dashboard queries aibrix:modelclaim_* from the sidecar: with a model active AIBrix serves
    them; outrider served none. Here the model is adopted by a second outrider after the first stopped (kept
    running), so the adoption outcome is counted too, and its kvcached segment is the engine's figures."""
    lifecycle = dataclasses.replace(lifecycle_settings(tmp_path), on_exit="keep")
    settings = outrider_settings(tmp_path, vllm_engine.base_url, metrics_profiles=("outrider", "aibrix"))
    artifact = make_artifact(tmp_path / "models" / "tiny")
    async with trio.open_nursery() as serving:
        first = await start_outrider(serving, settings, lifecycle=lifecycle)
        before = await first.client.get("/metrics")
        started = await first.client.post(
            "/v1/runtime/models/activate", json={"model_name": "tiny", "artifact_url": str(artifact)}, timeout=30
        )
        assert started.status_code == 200, started.text
        first.shutdown.set()
    # The figures kvcached in the engine would have written into the segment outrider made for it.
    (lifecycle.shm_dir / "kvc_tiny").write_bytes(struct.pack("<3q", 8 << 30, 1 << 30, 1 << 20))
    second = await start_outrider(nursery, settings, lifecycle=dataclasses.replace(lifecycle, on_exit="stop"))

    page = (await second.client.get("/metrics")).text

    # Before any model: every family, at zero, as AIBrix serves them.
    assert _samples(before.text, "aibrix:modelclaim_models_resident") == {(): 0.0}
    assert _samples(before.text, "aibrix:modelclaim_engine_state")[(("phase", "active"),)] == 0.0
    assert _samples(page, "aibrix:modelclaim_models_resident") == {(): 1.0}
    assert _samples(page, "aibrix:modelclaim_engine_state") == {
        (("phase", "active"),): 1.0,
        (("phase", "sleeping"),): 0.0,
        (("phase", "restarting"),): 0.0,
        (("phase", "failed"),): 0.0,
    }
    assert _samples(page, "aibrix:modelclaim_kv_used_bytes") == {(("model", "tiny"),): float((1 << 30) + (1 << 20))}
    assert _samples(page, "aibrix:modelclaim_kv_total_bytes") == {(("model", "tiny"),): float(8 << 30)}
    assert _samples(page, "aibrix:modelclaim_hbm_peak_bytes") == {(("model", "tiny"),): 0.0}
    adoptions = _samples(page, "aibrix:modelclaim_engine_re_adoptions_total")
    assert adoptions[(("result", "success"),)] == 1.0 and sum(adoptions.values()) == 1.0 and len(adoptions) == 7
    assert (await second.client.post("/v1/runtime/models/deactivate", json={"model_name": "tiny"})).status_code == 200
