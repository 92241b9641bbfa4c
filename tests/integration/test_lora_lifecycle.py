"""outrider's LoRA lifecycle against stand-in vLLM and SGLang servers over real sockets.

Declared adapters get loaded, retracted ones unloaded, foreign ones left alone, a restarted engine is repaired
without any call, failures back off per adapter, and the adapters file is followed as it changes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lora_fixtures import engine, lora_settings, make_adapter, root, vllm

__all__ = ["engine", "root", "vllm"]  # fixtures


async def state_of(o: Running, name: str) -> str:
    response = await o.client.get(f"/v1/adapters/{name}")
    return str(response.json()["state"]) if response.status_code == 200 else "absent"


async def test_declared_adapter_is_loaded_and_retracted_one_unloaded(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root))
    response = await o.client.put("/v1/adapters/a", json={"source": "pvc://a", "wait": True})
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["state"] == "loaded"
    assert record["origin"] == "api"
    assert record["loaded_at"] is not None
    assert engine.loaded == {"a": str(root / "a")}

    listed = (await o.client.get("/v1/adapters")).json()["adapters"]
    assert [(r["name"], r["state"]) for r in listed] == [("a", "loaded")]

    response = await o.client.delete("/v1/adapters/a", params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert engine.loaded == {}
    assert (await o.client.get("/v1/adapters/a")).status_code == 404
    o.shutdown.set()


async def test_put_without_wait_answers_at_once_and_loads_in_background(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    response = await o.client.put("/v1/adapters/a", json={"source": str(root / "a")})
    assert response.status_code == 202
    assert response.json()["state"] in ("pending", "downloading", "loading", "loaded")
    await wait_until(lambda: _is(o, "a", "loaded"), within=5, what="a loaded")
    assert vllm.loaded == {"a": str(root / "a")}
    o.shutdown.set()


async def _is(o: Running, name: str, state: str) -> bool:
    return await state_of(o, name) == state


async def test_adapters_someone_else_loaded_are_left_alone(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    engine.loaded["foreign"] = "/somewhere/else"
    o = await start_outrider(nursery, lora_settings(engine, root))
    assert (await o.client.put("/v1/adapters/a", json={"source": "pvc://a", "wait": True})).status_code == 200
    assert (await o.client.delete("/v1/adapters/a?wait=true")).status_code == 200
    passes = engine.models_requests

    async def more_passes() -> bool:
        return engine.models_requests >= passes + 3

    await wait_until(more_passes, within=5, what="three more reconcile passes")
    assert engine.loaded == {"foreign": "/somewhere/else"}
    assert engine.unload_calls("foreign") == []
    assert (await o.client.get("/v1/adapters/foreign")).status_code == 404
    o.shutdown.set()


@pytest.mark.parametrize("down_passes", [0, 2])
async def test_restarted_engine_gets_every_adapter_back_without_a_call(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path, down_passes: int
) -> None:
    """How soon (within one sync interval of the engine answering again) is pinned on a virtual clock in
    tests/unit/test_reconciler_clock.py; over sockets, that it happens with no call, however long the engine was
    down."""
    o = await start_outrider(nursery, lora_settings(engine, root))
    for name in ("a", "b"):
        response = await o.client.put(f"/v1/adapters/{name}", json={"source": f"pvc://{name}", "wait": True})
        assert response.status_code == 200
    loads_before = len(engine.load_calls())
    unreached = await _engine_unavailable(o.client)

    engine.stop()
    engine.forget()

    async def passes_failed() -> bool:
        return await _engine_unavailable(o.client) >= unreached + down_passes

    # Down for that many passes that could not reach it (counted, not timed): outrider must keep polling.
    await wait_until(passes_failed, what=f"{down_passes} reconcile passes failing against the stopped engine")
    await engine.start(nursery)

    async def all_back() -> bool:
        return engine.loaded == {"a": str(root / "a"), "b": str(root / "b")}

    await wait_until(all_back, what="both adapters reloaded")
    assert len(engine.load_calls()) == loads_before + 2
    await wait_until(lambda: _is(o, "b", "loaded"), what="b shown loaded again")
    o.shutdown.set()


async def _engine_unavailable(client: httpx.AsyncClient) -> float:
    """Reconcile passes (and attempts) that could not reach the engine, as outrider counts them on /metrics."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith('outrider_adapter_reconcile_errors_total{reason="engine_unavailable"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no engine_unavailable reconcile error count on /metrics")


async def test_one_failing_adapter_does_not_block_others_and_backs_off(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root, adapter_sync_interval=0.1))
    for name in ("broken", "a", "b"):
        assert (await o.client.put(f"/v1/adapters/{name}", json={"source": f"pvc://{name}"})).status_code == 202

    async def good_loaded() -> bool:
        return set(engine.loaded) == {"a", "b"}

    await wait_until(good_loaded, within=5, what="a and b loaded beside a failing adapter")

    async def four_attempts() -> bool:
        return len(engine.load_calls("broken")) >= 5

    await wait_until(four_attempts, within=10, what="five attempts at the broken adapter")
    times = [c.at for c in engine.load_calls("broken")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for i, gap in enumerate(gaps[:4]):
        assert gap >= 0.1 * 2**i * 0.9, f"retry {i + 1} came after {gap:.3f}s: no exponential backoff ({gaps})"
    record = (await o.client.get("/v1/adapters/broken")).json()
    assert record["state"] == "failed"
    assert record["attempts"] >= 5
    assert record["last_error"]["type"] == "engine_refused"
    assert "broken" in record["last_error"]["message"]
    o.shutdown.set()


async def test_wait_reports_the_engines_refusal_and_keeps_the_declaration(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    response = await o.client.put("/v1/adapters/broken", json={"source": "pvc://broken", "wait": True})
    assert response.status_code == 404  # vLLM's own status for a path without an adapter
    body = response.json()
    assert body["error"]["type"] == "engine_refused"
    assert "No adapter found" in body["error"]["message"]
    assert body["adapter"]["state"] == "failed"
    # A native declaration stays: it is retried with backoff until retracted.
    assert (await o.client.get("/v1/adapters/broken")).json()["desired"] is True
    # Declaring it again once fixed retries at once, without waiting out the backoff.
    make_adapter(root, "broken")
    response = await o.client.put("/v1/adapters/broken", json={"source": "pvc://broken", "wait": True})
    assert response.status_code == 200, response.text
    o.shutdown.set()


async def test_native_api_rejects_bad_requests(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    cases: list[tuple[str, str, object, int, str | None]] = [
        ("PUT", "/v1/adapters/a", b"{not json", 400, "body"),
        ("PUT", "/v1/adapters/a", {"source": 5}, 400, "source"),
        ("PUT", "/v1/adapters/a", {}, 400, "source"),
        ("PUT", "/v1/adapters/a", {"source": "pvc://a", "config": [1]}, 400, "config"),
        ("PUT", "/v1/adapters/a", {"source": "pvc://a", "wait": "maybe"}, 400, "wait"),
        ("PUT", "/v1/adapters/a%01b", {"source": "pvc://a"}, 400, "name"),
        ("PUT", "/v1/adapters/" + "x" * 129, {"source": "pvc://a"}, 400, "name"),
        ("PUT", "/v1/adapters/%20%20", {"source": "pvc://a"}, 400, "name"),
        ("GET", "/v1/adapters/nope", None, 404, "name"),
        ("DELETE", "/v1/adapters/nope", None, 404, "name"),
    ]
    for method, path, body, status, field in cases:
        content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        response = await o.client.request(method, path, content=content)
        assert response.status_code == status, (method, path, body, response.text)
        error = response.json()["error"]
        assert error["message"]
        assert error.get("field") == field, (path, body, error)
    assert vllm.load_calls() == []
    o.shutdown.set()


async def test_adapters_file_is_followed_as_it_changes(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "adapters.yaml"
    listing.write_text("- name: a\n  source: pvc://a\n")
    o = await start_outrider(nursery, lora_settings(engine, root, adapters_file=str(listing)))

    async def loaded(*names: str) -> bool:
        return set(engine.loaded) == set(names)

    await wait_until(lambda: loaded("a"), within=5, what="a loaded from the file")
    record = (await o.client.get("/v1/adapters/a")).json()
    assert record["origin"] == "file"
    # The file owns its names.
    assert (await o.client.delete("/v1/adapters/a")).status_code == 409
    assert (await o.client.put("/v1/adapters/a", json={"source": "pvc://b"})).status_code == 409
    # Asking for exactly what the file declares is not a conflict, and does not take the name from the file.
    assert (
        await o.client.post("/v1/lora_adapter/load", json={"lora_name": "a", "lora_path": "pvc://a"})
    ).status_code == 200
    assert (await o.client.get("/v1/adapters/a")).json()["origin"] == "file"

    listing.write_text(json.dumps([{"name": "b", "source": str(root / "b")}]))  # JSON is fine too
    await wait_until(lambda: loaded("b"), within=5, what="a unloaded and b loaded after the edit")

    watcher = o.runtime.adapters_file
    assert watcher is not None
    applied = watcher.applied
    listing.write_text("- name: c\n  source: [not, a, string\n")  # broken: the last good set stays
    passes = engine.models_requests
    await wait_until(lambda: _more(engine, passes + 3), within=5, what="three passes after the bad edit")
    assert watcher.applied == applied
    assert set(engine.loaded) == {"b"}

    listing.write_text("adapters:\n  - {name: b, source: pvc://b}\n  - {name: c, source: pvc://c}\n")
    await wait_until(lambda: loaded("b", "c"), within=5, what="b and c after fixing the file")
    o.shutdown.set()


async def _more(engine: FakeLoraEngine, n: int) -> bool:
    return engine.models_requests >= n


async def test_engine_api_key_goes_with_every_call(nursery: trio.Nursery, engine: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root, engine_api_key="sekret-key"))
    assert (await o.client.put("/v1/adapters/a", json={"source": "pvc://a", "wait": True})).status_code == 200
    assert (await o.client.delete("/v1/adapters/a?wait=true")).status_code == 200
    assert engine.load_calls("a") and engine.unload_calls("a")
    assert engine.seen_headers
    assert all(h.get("authorization") == "Bearer sekret-key" for h in engine.seen_headers)
    listing = (await o.client.get("/v1/adapters")).text + (await o.client.get("/metrics")).text
    assert "sekret" not in listing
    o.shutdown.set()


async def test_adapter_metrics(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    assert (await o.client.put("/v1/adapters/a", json={"source": "pvc://a", "wait": True})).status_code == 200
    page = (await o.client.get("/metrics")).text
    assert 'outrider_adapters{state="loaded"} 1.0' in page
    assert "outrider_adapter_load_seconds_count 1.0" in page
    vllm.stop()
    await wait_until(
        lambda: _page_has(o.client, 'outrider_adapter_reconcile_errors_total{reason="engine_unavailable"}'),
        within=5,
        what="engine_unavailable reconcile errors counted",
    )
    o.shutdown.set()


async def _page_has(client: httpx.AsyncClient, prefix: str) -> bool:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(prefix) and float(line.rsplit(" ", 1)[1]) >= 1:
            return True
    return False
