"""Download routes of a running outrider over real sockets: native, Kthena and AIBrix spellings, jobs, confinement."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from outrider.errors import InvalidSource
from outrider.service import serve
from outrider.sources.base import Checksum, Source
from outrider.transfer.lock import LOCK_NAME
from outrider.transfer.settings import DownloadSettings
from outrider.transfer.state import RECORD_NAME
from tests.fakes.engine import FakeEngine
from tests.fakes.http_store import RangeServer, http_opener
from tests.fakes.sources import MemorySource
from tests.integration.conftest import Running, checked_client, fast_settings, wait_until

MIB = 1024 * 1024
BIG = "model.safetensors"


@pytest.fixture(scope="module")
def tree() -> dict[str, bytes]:
    return {"config.json": b'{"a": 1}', BIG: os.urandom(12 * MIB + 17), "sub/tokenizer.json": os.urandom(5000)}


@pytest.fixture
def store(tree: dict[str, bytes]) -> Iterator[RangeServer]:
    s = RangeServer(tree).start()
    yield s
    s.stop()


@dataclasses.dataclass
class Outrider:
    run: Running
    root: Path
    mem: dict[str, MemorySource]

    @property
    def client(self) -> httpx.AsyncClient:
        return self.run.client


@pytest.fixture
async def outrider(nursery: trio.Nursery, vllm_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[Outrider]:
    root = tmp_path / "models"
    root.mkdir()
    mem: dict[str, MemorySource] = {}

    def opener(source: str, config: Mapping[str, object] | None) -> Source:
        if source.startswith("mem://"):
            if source not in mem:
                raise InvalidSource(f"unknown test source {source}", field="source")
            return mem[source]
        return http_opener(source, config)

    settings = fast_settings(vllm_engine, downloads=DownloadSettings(model_root=str(root), workers=4, chunk_size=MIB))
    shutdown = trio.Event()
    runtime, binds = await nursery.start(functools.partial(serve, settings, shutdown, source_opener=opener))
    client = await checked_client(binds[0], request_timeout=30.0)
    yield Outrider(Running(runtime, binds[0], client, shutdown), root, mem)
    shutdown.set()


def sample(page: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_tree(dest: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        assert sha((dest / path).read_bytes()) == sha(data), path


def everything_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


async def job_state(o: Outrider, job_id: str) -> dict[str, Any]:
    response = await o.client.get(f"/v1/downloads/{job_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_native_download_runs_as_a_job_and_lands_byte_exact(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes]
) -> None:
    response = await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": "llama"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/downloads/{job['id']}"
    assert job["dest"] == str(outrider.root / "llama") and job["bytes_total"] == sum(len(d) for d in tree.values())

    async def completed() -> bool:
        return bool((await job_state(outrider, job["id"]))["state"] == "completed")

    await wait_until(completed, within=30, what="job completed")
    assert_tree(outrider.root / "llama", tree)
    final = await job_state(outrider, job["id"])
    assert final["bytes_done"] == final["bytes_total"] and final["error"] is None
    assert {f["state"] for f in final["files"]} == {"published"}
    listed = (await outrider.client.get("/v1/downloads")).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    page = (await outrider.client.get("/metrics")).text
    assert sample(page, "outrider_download_bytes_total") == final["bytes_total"]
    assert sample(page, "outrider_download_files_total") == 3
    assert sample(page, "outrider_download_jobs_active") == 0
    assert sample(page, "outrider_download_duration_seconds_count") == 1


async def test_asking_again_is_a_no_op(outrider: Outrider, store: RangeServer) -> None:
    body = {"source": store.url, "dest": "llama", "wait": True}
    first = await outrider.client.post("/v1/downloads", json=body)
    assert first.status_code == 200 and first.json()["state"] == "completed"
    gets = len(store.gets)
    again = await outrider.client.post("/v1/downloads", json=body)
    assert again.status_code == 200 and again.json()["state"] == "completed"
    assert len(store.gets) == gets
    assert again.json()["id"] != first.json()["id"]


def zero_the_start(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"\0" * MIB)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # as a later write's clock tick would


async def test_a_published_file_changed_on_disk_is_fetched_again(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes]
) -> None:
    """The record is trusted only while the file is the one published: zeros written over it in place (its size
    unchanged), as a stray writer or a bad disk would leave it, are not taken for the model."""
    body = {"source": store.url, "dest": "llama", "wait": True}
    assert (await outrider.client.post("/v1/downloads", json=body)).json()["state"] == "completed"
    zero_the_start(outrider.root / "llama" / BIG)
    store.gets.clear()
    again = await outrider.client.post("/v1/downloads", json=body)
    assert again.status_code == 200 and again.json()["state"] == "completed"
    states = {f["path"]: f["state"] for f in again.json()["files"]}
    assert states[BIG] == "published" and states["config.json"] == "unchanged"
    assert store.gets_of(BIG) and not store.gets_of("config.json")
    assert_tree(outrider.root / "llama", tree)


async def test_two_requests_for_one_dest_share_one_download(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes]
) -> None:
    store.bytes_per_second = 40 * MIB  # slow enough that the second request arrives while the first runs
    body = {"source": store.url, "dest": "shared"}
    answers: list[httpx.Response] = []

    async def post() -> None:
        answers.append(await outrider.client.post("/v1/downloads", json=body))

    async with trio.open_nursery() as n:
        n.start_soon(post)
        n.start_soon(post)
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    waited = await outrider.client.post("/v1/downloads", json={**body, "wait": True})
    assert waited.status_code == 200 and waited.json()["id"] == answers[0].json()["id"]
    assert_tree(outrider.root / "shared", tree)
    chunks = sum(-(-len(d) // MIB) for d in tree.values())
    assert len(store.gets) == chunks  # every range fetched exactly once


async def test_another_source_for_a_busy_dest_is_a_conflict(outrider: Outrider, store: RangeServer) -> None:
    store.bytes_per_second = 10 * MIB
    first = await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": "busy"})
    assert first.status_code == 202
    outrider.mem["mem://other/model"] = MemorySource({"x.json": b"{}"}, display="mem://other/model")
    for dest in ("busy", "busy/inner"):
        other = await outrider.client.post("/v1/downloads", json={"source": "mem://other/model", "dest": dest})
        assert other.status_code == 409, other.text
        assert other.json()["error"]["field"] == "dest" and first.json()["id"] in other.json()["error"]["message"]
    await outrider.client.delete(f"/v1/downloads/{first.json()['id']}")


async def test_delete_cancels_promptly_and_leaves_no_partial_file(outrider: Outrider, store: RangeServer) -> None:
    store.bytes_per_second = 4 * MIB
    job = (await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": "gone"})).json()

    async def some_bytes() -> bool:
        return bool((await job_state(outrider, job["id"]))["bytes_done"] > MIB)

    await wait_until(some_bytes, within=20, what="first bytes")
    response = await outrider.client.delete(f"/v1/downloads/{job['id']}")
    # Cancelled, not completed: the job stopped instead of finishing the ~3 s of file left at this rate, and was
    # over by the answer (nothing left below). How fast a cancel is belongs in bench/, not in a bound here.
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    leftovers = everything_under(outrider.root / "gone")
    assert BIG not in leftovers and not [p for p in leftovers if p.endswith((".part", ".part.json"))]
    again = await outrider.client.delete(f"/v1/downloads/{job['id']}")
    assert again.json()["state"] == "cancelled"
    assert (await outrider.client.delete("/v1/downloads/nope")).status_code == 404


@pytest.mark.parametrize(
    "dest",
    ["..", "../x", "a/../../x", "a/../b", "/etc/outrider", "%2e%2e/x", "%2E%2E", "", "a\x00b", "link/x", "link"],
)
async def test_every_escape_spelling_is_refused_before_anything_is_written(
    outrider: Outrider, store: RangeServer, tmp_path: Path, dest: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outrider.root / "link").symlink_to(outside)
    before = everything_under(tmp_path)
    attempts: list[tuple[str, dict[str, str]]] = [
        ("/v1/downloads", {"source": store.url, "dest": dest}),
        ("/v1/download_model", {"source": store.url, "output_dir": dest}),
    ]
    if dest:  # AIBrix: an empty local_dir means the model root, which is allowed
        attempts.append(("/v1/model/download", {"model_uri": store.url, "local_dir": dest, "model_name": "m"}))
    for route, body in attempts:
        response = await outrider.client.post(route, json=body)
        error = response.json()["error"]
        # A path that would leave the model root is forbidden (403); one that is no path at all is a 400.
        expected = (400, "invalid_request") if dest in ("", "a\x00b") else (403, "path_outside_root")
        assert (response.status_code, error["type"]) == expected, (route, response.text)
        assert error["field"] in ("dest", "output_dir", "local_dir")
    assert everything_under(tmp_path) == before
    assert store.gets == []


async def test_absolute_dest_under_the_root_is_accepted(outrider: Outrider, store: RangeServer) -> None:
    dest = str(outrider.root / "abs" / "m")
    response = await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": dest, "wait": True})
    assert response.status_code == 200 and response.json()["dest"] == dest


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dest": "m"}, "source"),
        ({"source": "x"}, "dest"),
        ({"source": 5, "dest": "m"}, "source"),
        ({"source": "x", "dest": ["m"]}, "dest"),
        ({"source": "x", "dest": "m", "workers": "8"}, "workers"),
        ({"source": "x", "dest": "m", "workers": 0}, "workers"),
        ({"source": "x", "dest": "m", "workers": True}, "workers"),
        ({"source": "x", "dest": "m", "chunk_size": "huge"}, "chunk_size"),
        ({"source": "x", "dest": "m", "include": 5}, "include"),
        ({"source": "x", "dest": "m", "exclude": [1]}, "exclude.0"),  # a dotted path to the item
        ({"source": "x", "dest": "m", "wait": "yes"}, "wait"),
        ({"source": "x", "dest": "m", "config": 5}, "config"),
        ({"source": "x", "dest": "m", "config": "{not json"}, "config"),
        ({"source": "x", "dest": "m", "surprise": 1}, "surprise"),
    ],
)
async def test_native_body_is_validated_field_by_field(outrider: Outrider, body: dict[str, Any], field: str) -> None:
    response = await outrider.client.post("/v1/downloads", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("route", ["/v1/downloads", "/v1/download_model", "/v1/model/download"])
@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", b'"text"'])
async def test_non_json_bodies_are_a_400(outrider: Outrider, route: str, raw: bytes) -> None:
    response = await outrider.client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"


async def test_filters_select_files_and_an_empty_selection_names_the_filter(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes]
) -> None:
    body = {"source": store.url, "dest": "json-only", "include": ["*.json"], "exclude": ["sub/*"], "wait": True}
    response = await outrider.client.post("/v1/downloads", json=body)
    assert response.status_code == 200
    assert everything_under(outrider.root / "json-only") == [RECORD_NAME, LOCK_NAME, "config.json"]
    empty = await outrider.client.post("/v1/downloads", json={**body, "dest": "none", "include": ["*.gguf"]})
    assert empty.status_code == 400 and empty.json()["error"]["field"] == "include"
    assert "*.gguf" in empty.json()["error"]["message"]
    assert not (outrider.root / "none").exists()


async def test_checksum_mismatch_fails_the_job_and_publishes_nothing(outrider: Outrider) -> None:
    source = MemorySource({"w.safetensors": os.urandom(3 * MIB)}, display="mem://bad/model")
    source.listed_checksums["w.safetensors"] = Checksum("sha256", "0" * 64)
    outrider.mem["mem://bad/model"] = source
    body = {"source": "mem://bad/model", "dest": "bad", "wait": True}
    response = await outrider.client.post("/v1/downloads", json=body)
    assert response.status_code == 502
    answer = response.json()
    assert answer["error"]["type"] == "verification_failed" and answer["job"]["state"] == "failed"
    assert everything_under(outrider.root / "bad") == [RECORD_NAME, LOCK_NAME]
    page = (await outrider.client.get("/metrics")).text
    assert sample(page, "outrider_download_failures_total", reason="verification_failed") == 1


async def test_store_refusal_fails_fast_with_the_store_message(outrider: Outrider, store: RangeServer) -> None:
    store.forbidden.add(BIG)
    response = await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": "denied", "wait": True})
    assert response.status_code == 403
    assert "403 AccessDenied" in response.json()["error"]["message"]
    assert len(store.gets_of(BIG)) <= 4  # one per worker at most: a 403 is not retried


async def test_not_enough_disk_is_a_507_before_anything_is_written(outrider: Outrider) -> None:
    source = MemorySource({"huge.safetensors": b""}, display="mem://huge/model")
    source.listed_sizes["huge.safetensors"] = 1 << 60
    outrider.mem["mem://huge/model"] = source
    response = await outrider.client.post("/v1/downloads", json={"source": "mem://huge/model", "dest": "huge"})
    assert response.status_code == 507
    assert response.json()["error"]["type"] == "insufficient_storage"
    assert not (outrider.root / "huge").exists()


# -- Kthena ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [None, '{"timeout": 5}', {"timeout": 5}])
async def test_kthena_sync_download(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes], config: object
) -> None:
    body: dict[str, Any] = {"source": store.url, "output_dir": "kthena/m", "max_workers": 2}
    if config is not None:
        body["config"] = config
    response = await outrider.client.post("/v1/download_model", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "completed" and answer["message"]
    assert answer["output_dir"] == str(outrider.root / "kthena/m")
    assert_tree(outrider.root / "kthena" / "m", tree)


async def test_kthena_async_download(outrider: Outrider, store: RangeServer, tree: dict[str, bytes]) -> None:
    body = {"source": store.url, "output_dir": "kthena/a", "async_download": True}
    response = await outrider.client.post("/v1/download_model", json=body)
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "started"

    async def done() -> bool:
        return bool((await job_state(outrider, answer["job_id"]))["state"] == "completed")

    await wait_until(done, within=30, what="async download")
    assert_tree(outrider.root / "kthena" / "a", tree)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"output_dir": "m"}, "source"),
        ({"source": "s3://b/p"}, "output_dir"),
        ({"source": "s3://b/p", "output_dir": "m", "config": "[1]"}, "config"),
        ({"source": "s3://b/p", "output_dir": "m", "max_workers": "eight"}, "max_workers"),
        ({"source": "s3://b/p", "output_dir": "m", "max_workers": 2.5}, "max_workers"),
        ({"source": "s3://b/p", "output_dir": "m", "async_download": "soon"}, "async_download"),
    ],
)
async def test_kthena_bad_bodies_name_the_field(outrider: Outrider, body: dict[str, Any], field: str) -> None:
    response = await outrider.client.post("/v1/download_model", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == field
    if field in ("source", "output_dir"):
        assert response.json()["error"]["message"] == f"Missing required parameter: {field}"


async def test_kthena_failed_download_is_not_reported_completed(outrider: Outrider, store: RangeServer) -> None:
    store.forbidden.add("config.json")
    response = await outrider.client.post("/v1/download_model", json={"source": store.url, "output_dir": "kf"})
    assert response.status_code == 403
    assert response.json()["status"] == "failed"


# -- AIBrix ------------------------------------------------------------------------------------------------------


async def test_aibrix_download_lands_in_local_dir_model_name_and_lists(
    outrider: Outrider, store: RangeServer, tree: dict[str, bytes]
) -> None:
    store.bytes_per_second = 20 * MIB
    body = {
        "model_uri": store.url,
        "local_dir": str(outrider.root / "aibrix"),
        "model_name": "llama-3",
        "download_extra_config": json.dumps({"num_threads": 2, "timeout": 5}),
    }
    response = await outrider.client.post("/v1/model/download", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    dest = outrider.root / "aibrix" / "llama-3"
    assert answer == {
        "model_name": "llama-3",
        "model_root_path": str(dest),
        "source": store.url,
        "model_status": "downloading",
    }

    async def downloaded() -> bool:
        listing = (await outrider.client.get("/v1/model/list")).json()
        assert listing["object"] == "list"
        return any(c["model_root_path"] == str(dest) and c["model_status"] == "downloaded" for c in listing["data"])

    await wait_until(downloaded, within=30, what="model listed as downloaded")
    assert_tree(dest, tree)
    store.bytes_per_second = None
    again = await outrider.client.post("/v1/model/download", json=body)
    assert again.json()["model_status"] == "downloaded"


@pytest.mark.parametrize("name", ["..", "a/b", "../x", "."])
async def test_aibrix_model_name_cannot_escape(outrider: Outrider, store: RangeServer, name: str) -> None:
    body = {"model_uri": store.url, "model_name": name}
    response = await outrider.client.post("/v1/model/download", json=body)
    assert response.status_code == 400 and response.json()["error"]["field"] == "model_name"
    assert everything_under(outrider.root) == []


async def test_aibrix_suffix_allow_list_in_extra_config(outrider: Outrider, store: RangeServer) -> None:
    body = {
        "model_uri": store.url,
        "model_name": "only-json",
        "download_extra_config": {"allow_file_suffix": ["json"]},
    }
    assert (await outrider.client.post("/v1/model/download", json=body)).status_code == 200

    async def listed() -> bool:
        data = (await outrider.client.get("/v1/model/list")).json()["data"]
        return any(c["model_name"] == "only-json" and c["model_status"] == "downloaded" for c in data)

    await wait_until(listed, within=30, what="listed")
    assert everything_under(outrider.root / "only-json") == [
        RECORD_NAME,
        LOCK_NAME,
        "config.json",
        "sub",
        "sub/tokenizer.json",
    ]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/downloads", {"dest": "theirs", "wait": True}, "dest"),
        ("/v1/download_model", {"output_dir": "theirs"}, "output_dir"),
        ("/v1/model/download", {"model_name": "theirs"}, "model_name"),
    ],
)
async def test_a_directory_outrider_did_not_download_into_is_never_written(
    outrider: Outrider, store: RangeServer, route: str, body: dict[str, Any], field: str
) -> None:
    theirs = outrider.root / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"the operator": "model"}')
    source = {"/v1/model/download": "model_uri"}.get(route, "source")

    refused = await outrider.client.post(route, json={source: store.url, **body})

    assert refused.status_code == 409, refused.text
    assert (refused.json()["error"]["type"], refused.json()["error"]["field"]) == ("conflict", field)
    assert everything_under(theirs) == ["config.json"] and store.gets == []
    assert (theirs / "config.json").read_text() == '{"the operator": "model"}'


async def test_outriders_download_of_another_source_is_not_overwritten(outrider: Outrider, store: RangeServer) -> None:
    first = await outrider.client.post("/v1/downloads", json={"source": store.url, "dest": "llama", "wait": True})
    assert first.status_code == 200, first.text
    outrider.mem["mem://other/model"] = MemorySource({"x.json": b"{}"}, display="mem://other/model")

    other = await outrider.client.post("/v1/downloads", json={"source": "mem://other/model", "dest": "llama"})

    assert other.status_code == 409 and other.json()["error"]["field"] == "dest", other.text
    assert store.url in other.json()["error"]["message"] and not (outrider.root / "llama" / "x.json").exists()
    # An empty directory, or one holding only an empty lost+found (a fresh volume's root), is no one's.
    (outrider.root / "fresh" / "lost+found").mkdir(parents=True)
    fresh = await outrider.client.post(
        "/v1/downloads", json={"source": "mem://other/model", "dest": "fresh", "wait": True}
    )
    assert fresh.status_code == 200, fresh.text
