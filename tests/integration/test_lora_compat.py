"""The AIBrix and Kthena LoRA routes against stand-in vLLM and SGLang servers over real sockets."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from tests.fakes.lora_engine import FakeLoraEngine
from tests.integration.conftest import Running, start_outrider, wait_until
from tests.integration.lora_fixtures import engine, lora_settings, root, vllm

__all__ = ["engine", "root", "vllm"]  # fixtures shared with the lifecycle tests


async def aibrix_load(o: Running, name: object, path: object) -> tuple[int, str]:
    response = await o.client.post("/v1/lora_adapter/load", json={"lora_name": name, "lora_path": path})
    return response.status_code, response.text


async def test_aibrix_load_unload_and_models(nursery: trio.Nursery, engine: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root))
    status, text = await aibrix_load(o, "a", str(root / "a"))
    assert (status, text) == (200, "Success: LoRA adapter 'a' added successfully.")
    assert engine.loaded == {"a": str(root / "a")}

    models = (await o.client.get("/v1/models")).json()
    assert models["object"] == "list"
    entries = {m["id"]: m for m in models["data"]}
    assert entries["a"]["parent"] == "tiny"
    assert entries["a"]["root"] == str(root / "a")
    assert entries["tiny"]["parent"] is None

    response = await o.client.post("/v1/lora_adapter/unload", json={"lora_name": "a"})
    assert (response.status_code, response.text) == (200, "Success: LoRA adapter 'a' removed successfully.")
    assert engine.loaded == {}
    # Not loaded any more: unloading again is a 404, never a success.
    response = await o.client.post("/v1/lora_adapter/unload", json={"lora_name": "a"})
    assert response.status_code == 404
    assert response.json()["error"]["message"]
    o.shutdown.set()


async def test_engine_refusals_are_relayed_with_the_engines_status(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    engine.loaded["taken"] = "/other/path"
    o = await start_outrider(nursery, lora_settings(engine, root))

    # A name someone else loaded: the engine's duplicate answer (400 on both engines).
    status, text = await aibrix_load(o, "taken", str(root / "a"))
    assert status == 400
    error = json.loads(text)["error"]
    assert error["type"] == "engine_refused"
    assert "taken" in error["message"]
    assert engine.loaded["taken"] == "/other/path"

    # A directory without an adapter: vLLM says 404, SGLang 400; outrider relays whichever.
    status, text = await aibrix_load(o, "broken", str(root / "broken"))
    assert status == (404 if engine.flavor == "vllm" else 400)
    assert json.loads(text)["error"]["type"] == "engine_refused"

    # A failed compatible load leaves nothing declared behind: it must not appear later on its own.
    listed = (await o.client.get("/v1/adapters")).json()["adapters"]
    assert listed == []
    passes = engine.models_requests
    await wait_until(lambda: _at_least(engine, passes + 3), within=5, what="three passes")
    assert len(engine.load_calls("broken")) == 1
    o.shutdown.set()


async def _at_least(engine: FakeLoraEngine, n: int) -> bool:
    return engine.models_requests >= n


async def test_unloading_a_foreign_adapter_is_relayed(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    engine.loaded["foreign"] = "/somewhere"
    o = await start_outrider(nursery, lora_settings(engine, root))
    response = await o.client.post("/v1/unload_lora_adapter", json={"lora_name": "foreign"})
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    assert "foreign" not in engine.loaded
    o.shutdown.set()


async def test_sources_outside_the_volume_are_refused(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    o = await start_outrider(nursery, lora_settings(vllm, root))
    # An absolute path outside both roots is the engine's to read (see test_aibrix_requests.py): not refused here.
    cases = [
        # `..` is refused by its words (400), as the download routes refuse the same source.
        ("pvc://../outside", 400, "invalid_source"),
        (str(root / "a" / ".." / ".." / "outside"), 400, "invalid_source"),
        ("pvc://escape", 403, "source_access_denied"),  # a symlink leading out
        (str(root / "missing"), 404, "source_not_found"),
        ("ftp://bucket/adapters/a", 400, "invalid_source"),  # remote, but no store speaks it
    ]
    for path, status, type_ in cases:
        got, text = await aibrix_load(o, "x", path)
        assert got == status, (path, text)
        assert json.loads(text)["error"]["type"] == type_, (path, text)
    assert vllm.load_calls() == []
    o.shutdown.set()


async def test_invalid_names_and_bodies_are_400_never_500(
    nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path
) -> None:
    o = await start_outrider(nursery, lora_settings(vllm, root))
    routes = ["/v1/lora_adapter/load", "/v1/lora_adapter/unload", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    bad_names: list[object] = ["", " ", "x" * 129, 5, None, ["a"], "a\x00b", "a\nb"]
    for route in routes:
        for name in bad_names:
            body = {"lora_name": name, "lora_path": str(root / "a"), "source": str(root / "a")}
            response = await o.client.post(route, json=body)
            assert response.status_code == 400, (route, name, response.text)
            assert response.json()["error"]["field"] == "lora_name"
        for raw in (b"{oops", b"[1, 2]", b"", b'"a"', b"\xff\xfe"):
            response = await o.client.post(route, content=raw)
            assert response.status_code == 400, (route, raw, response.text)
    kthena_cases: list[tuple[dict[str, object], str]] = [
        ({"lora_name": "a"}, "source"),
        ({"lora_name": "a", "source": 7}, "source"),
        ({"lora_name": "a", "source": "pvc://a", "config": 3}, "config"),
        ({"lora_name": "a", "source": "pvc://a", "config": "{not json"}, "config"),
        ({"lora_name": "a", "source": "pvc://a", "max_workers": "eight"}, "max_workers"),
        ({"lora_name": "a", "source": "pvc://a", "max_workers": True}, "max_workers"),
        ({"lora_name": "a", "source": "pvc://a", "async_download": "soon"}, "async_download"),
        ({"lora_name": "a", "source": "pvc://a", "output_dir": 1}, "output_dir"),
    ]
    for body, field in kthena_cases:
        response = await o.client.post("/v1/load_lora_adapter", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["field"] == field
    response = await o.client.post("/v1/load_lora_adapter", json={"lora_name": "a"})
    assert response.json()["error"]["message"] == "Missing required parameter: source"
    response = await o.client.post("/v1/lora_adapter/load", json={"lora_name": "a"})
    assert response.json()["error"]["field"] == "lora_path"
    assert vllm.calls == []
    o.shutdown.set()


async def test_kthena_load_sync_and_async(nursery: trio.Nursery, engine: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root))
    # config as the real Kthena runtime takes it (a JSON string) and as its docs show it (an object).
    body = {"lora_name": "a", "source": "pvc://a", "output_dir": str(root / "out-a"), "config": '{"endpoint": "x"}'}
    response = await o.client.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success"
    assert answer["lora_name"] == "a"
    assert engine.loaded["a"] == str(root / "a")  # on the volume already: loaded in place, nothing copied

    body2: dict[str, object] = {"lora_name": "b", "source": "pvc://b", "config": {"endpoint": "x"}}
    body2["async_download"] = True
    response = await o.client.post("/v1/load_lora_adapter", json=body2)
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "started"
    assert (answer["lora_name"], answer["source"]) == ("b", "pvc://b")
    assert "output_dir" in answer

    async def b_loaded() -> bool:
        return "b" in engine.loaded

    await wait_until(b_loaded, within=5, what="b loaded in the background")

    response = await o.client.post("/v1/unload_lora_adapter", json={"lora_name": "b"})
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    assert "b" not in engine.loaded
    response = await o.client.post("/v1/unload_lora_adapter", json={"lora_name": "b"})
    assert response.status_code == 404

    # output_dir must stay on the volume.
    body = {"lora_name": "c", "source": "s3://b/c", "output_dir": "/etc/evil"}
    response = await o.client.post("/v1/load_lora_adapter", json=body)
    assert response.status_code == 403
    assert response.json()["error"]["field"] == "output_dir"
    o.shutdown.set()


async def test_concurrent_loads_of_one_adapter_make_one_engine_call(
    nursery: trio.Nursery, engine: FakeLoraEngine, root: Path
) -> None:
    engine.hold = trio.Event()  # the engine keeps the first load until every request has arrived
    o = await start_outrider(nursery, lora_settings(engine, root))
    answers: list[tuple[int, str]] = []

    async def aibrix() -> None:
        answers.append(await aibrix_load(o, "a", str(root / "a")))

    async def kthena() -> None:
        response = await o.client.post("/v1/load_lora_adapter", json={"lora_name": "a", "source": str(root / "a")})
        answers.append((response.status_code, response.text))

    async with trio.open_nursery() as both:
        both.start_soon(aibrix)
        both.start_soon(aibrix)
        both.start_soon(kthena)
        await engine.load_arrived.wait()
        # Everything runs in this process, on this loop and no thread: once every task is blocked, the other two
        # requests are in outrider, waiting on the load the engine holds.
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [] and len(engine.load_calls("a")) == 1
        engine.hold.set()
    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert len(engine.load_calls("a")) == 1
    o.shutdown.set()


async def test_engine_down_is_503_naming_the_engine(nursery: trio.Nursery, engine: FakeLoraEngine, root: Path) -> None:
    o = await start_outrider(nursery, lora_settings(engine, root))
    engine.stop()
    requests = [
        ("POST", "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(root / "a")}),
        ("POST", "/v1/lora_adapter/unload", {"lora_name": "a"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "a", "source": "pvc://a"}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "a"}),
        ("GET", "/v1/models", None),
        ("PUT", "/v1/adapters/a", {"source": "pvc://a", "wait": True}),
    ]
    for method, path, body in requests:
        with trio.fail_after(5):
            response = await o.client.request(method, path, json=body)
        assert response.status_code == 503, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "engine_unavailable"
        assert engine.base_url in error["message"]
    # The native declaration stays and is loaded when the engine is back; the compatible ones were withdrawn.
    await engine.start(nursery)

    async def a_loaded() -> bool:
        return "a" in engine.loaded

    await wait_until(a_loaded, within=5, what="a loaded once the engine is back")
    o.shutdown.set()


async def test_vllm_without_runtime_lora_updating(nursery: trio.Nursery, vllm: FakeLoraEngine, root: Path) -> None:
    vllm.lora_updating = False
    o = await start_outrider(nursery, lora_settings(vllm, root))
    status, text = await aibrix_load(o, "a", str(root / "a"))
    assert status == 502
    error = json.loads(text)["error"]
    assert error["type"] == "engine_refused"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in error["message"]
    o.shutdown.set()
