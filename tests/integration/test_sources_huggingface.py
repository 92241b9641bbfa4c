"""The Hugging Face source (huggingface_hub for metadata, httpx for ranged bytes) against the local Hub."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from outrider.errors import SourceAccessDenied, SourceNotFound, SourceThrottled, SourceTransientError
from outrider.sources import Source, SourceOptions, env_defaults, open_source, parse_source, resolve_options
from tests.servers.huggingface import INVALID_CREDENTIALS, HubRepo, HubServer
from tests.servers.moto import free_port
from tests.servers.tree import BIG, BIG_RANGES, model_tree, read_all, sha256_hex

TOKEN = "hf_localvalidtoken0000"
SECRET_MARK = "hf_s3cr3t_never_shown"
TREE = model_tree()
LFS = frozenset({BIG, "tokenizer/tokenizer.json"})


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer(TOKEN)
    server.add_repo("org/public-model", HubRepo(TREE, lfs=LFS))
    server.add_repo("org/private-model", HubRepo(TREE, lfs=LFS, private=True, commit="c0ffee" * 6 + "c0ff"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def healthy(hub: HubServer) -> Iterator[None]:
    hub.fail_status = None
    hub.seen_auth.clear()
    yield
    hub.fail_status = None
    hub.fail_retry_after = None


def hf_source(hub: HubServer, source: str = "org/public-model", **changes: object) -> Source:
    options = dataclasses.replace(SourceOptions(hf_endpoint=hub.url, hf_token=TOKEN), **changes)  # type: ignore[arg-type]
    return open_source(source, options, pvc_root=None, max_workers=4)


def test_lists_files_with_sizes_lfs_sha256_and_the_commit(hub: HubServer) -> None:
    source = hf_source(hub)
    files = {f.path: f for f in source.list_files()}
    assert set(files) == set(TREE)
    for path, data in TREE.items():
        assert files[path].size == len(data)
        checksum = files[path].checksum
        if path in LFS:
            assert checksum is not None and (checksum.algorithm, checksum.value) == ("sha256", sha256_hex(data))
            assert files[path].version == sha256_hex(data)
        else:
            assert checksum is None  # a git blob id is not a content checksum
            assert files[path].version
    assert source.revision == hub.repos["org/public-model"].commit
    assert source.display == "hf://org/public-model@main"


@pytest.mark.parametrize(("start", "end"), BIG_RANGES)
def test_reads_lfs_ranges_byte_exact_through_the_cdn_redirect(hub: HubServer, start: int, end: int) -> None:
    assert read_all(hf_source(hub), BIG, start, end) == TREE[BIG][start:end]


def test_reads_git_stored_nested_and_empty_files(hub: HubServer) -> None:
    source = hf_source(hub)
    data = TREE["tokenizer/merges/merges.txt"]
    assert read_all(source, "tokenizer/merges/merges.txt", 3, len(data)) == data[3:]
    assert read_all(source, "config.json", 0, len(TREE["config.json"])) == TREE["config.json"]
    assert read_all(source, "notes/empty.txt", 0, 0) == b""


def test_reads_name_the_resolved_commit_not_the_branch(hub: HubServer) -> None:
    source = hf_source(hub)
    read_all(source, "config.json", 0, 5)  # before any listing: resolves first
    commit = hub.repos["org/public-model"].commit
    resolves = [path for path, _ in hub.seen_auth if "/resolve/" in path]
    assert resolves == [f"/org/public-model/resolve/{commit}/config.json"]


def test_token_goes_to_the_hub_but_not_to_the_cdn(hub: HubServer) -> None:
    read_all(hf_source(hub), BIG, 0, 10)
    seen = dict(hub.seen_auth)
    assert seen["/api/models/org/public-model/revision/main"] == f"Bearer {TOKEN}"
    assert any(path.startswith("/cdn/") and auth is None for path, auth in hub.seen_auth)
    assert any("/resolve/" in path and auth == f"Bearer {TOKEN}" for path, auth in hub.seen_auth)


def test_private_repo_with_the_token(hub: HubServer) -> None:
    source = hf_source(hub, "hf://org/private-model@main")
    assert {f.path for f in source.list_files()} == set(TREE)
    assert read_all(source, BIG, 100, 200) == TREE[BIG][100:200]


def test_private_repo_without_a_token_is_access_denied(hub: HubServer) -> None:
    with pytest.raises(SourceAccessDenied, match="401"):
        hf_source(hub, "org/private-model", hf_token=None, ambient_credentials=False).list_files()


def test_wrong_token_is_access_denied_without_the_token(hub: HubServer) -> None:
    source = hf_source(hub, "org/private-model", hf_token=SECRET_MARK)
    with pytest.raises(SourceAccessDenied) as info:
        source.list_files()
    assert SECRET_MARK not in info.value.message and SECRET_MARK not in repr(source)
    assert any(auth == f"Bearer {SECRET_MARK}" for _, auth in hub.seen_auth)  # it was sent, to its own hub


def test_missing_repo_revision_and_file_are_not_found(hub: HubServer) -> None:
    with pytest.raises(SourceNotFound, match="404"):
        hf_source(hub, "org/no-such-model").list_files()
    with pytest.raises(SourceNotFound, match="404"):
        hf_source(hub, "org/public-model@no-such-branch").list_files()
    source = hf_source(hub)
    source.list_files()
    with pytest.raises(SourceNotFound, match="404"):
        list(source.read_range("no/such/file.bin", 0, 10))


def test_revision_can_be_the_commit_sha(hub: HubServer) -> None:
    commit = hub.repos["org/public-model"].commit
    source = hf_source(hub, f"hf://org/public-model@{commit}")
    assert len(source.list_files()) == len(TREE)
    assert source.revision == commit


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_server_errors_are_transient(hub: HubServer) -> None:
    source = hf_source(hub)
    source.list_files()
    hub.fail_status = 500
    with pytest.raises(SourceTransientError, match="500"):
        hf_source(hub).list_files()
    with pytest.raises(SourceTransientError, match="500"):
        list(source.read_range(BIG, 0, 10))


def test_a_throttled_read_carries_the_wait_the_hub_named(hub: HubServer) -> None:
    source = hf_source(hub)
    source.list_files()
    hub.fail_status, hub.fail_retry_after = 429, "5"
    with pytest.raises(SourceThrottled) as info:
        list(source.read_range(BIG, 0, 10))
    assert info.value.retry_after == 5.0


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_refused_connection_is_transient() -> None:
    options = SourceOptions(hf_endpoint=f"http://127.0.0.1:{free_port()}", hf_token=TOKEN)
    with pytest.raises(SourceTransientError) as info:
        open_source("org/model", options, pvc_root=None, max_workers=1).list_files()
    assert TOKEN not in info.value.message


def test_a_request_named_endpoint_never_receives_the_pods_token(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kthena's leak, end to end: the pod's HF_AUTH_TOKEN is configured for its own hub; a request names ours.
    Without a token of its own the request is refused before anything is sent; with one, only that one goes."""
    monkeypatch.setenv("HF_TOKEN", SECRET_MARK)  # where huggingface_hub itself would look for a token
    pod = env_defaults({"HF_AUTH_TOKEN": SECRET_MARK, "HF_ENDPOINT": "https://hub.pod.internal"})
    with pytest.raises(SourceAccessDenied) as refused:
        resolve_options(parse_source("org/public-model"), {"hf_endpoint": hub.url}, pod)
    assert refused.value.field == "config" and hub.seen_auth == []
    options = resolve_options(parse_source("org/public-model"), {"hf_endpoint": hub.url, "hf_token": TOKEN}, pod)
    source = open_source("org/public-model", options, pvc_root=None, max_workers=1)
    assert len(source.list_files()) == len(TREE)
    read_all(source, BIG, 0, 10)
    read_all(source, "config.json", 0, 5)
    assert any(auth == f"Bearer {TOKEN}" for _, auth in hub.seen_auth)
    assert all(auth in (None, f"Bearer {TOKEN}") for _, auth in hub.seen_auth)  # never the pod's
    # the control: the operator's flag lets the pod's token through
    hub.seen_auth.clear()
    allowed = resolve_options(
        parse_source("org/public-model"), {"hf_endpoint": hub.url}, pod, allow_request_endpoints=True
    )
    with pytest.raises(SourceAccessDenied):  # our hub does not know the pod's token
        open_source("org/public-model", allowed, pvc_root=None, max_workers=1).list_files()
    assert all(auth == f"Bearer {SECRET_MARK}" for _, auth in hub.seen_auth)


def test_what_a_request_named_hub_answers_is_not_relayed(hub: HubServer) -> None:
    pod = env_defaults({})
    wrong = {"hf_endpoint": hub.url, "hf_token": "hf_not_the_hubs_token"}
    quiet = open_source(
        "org/public-model", resolve_options(parse_source("org/public-model"), wrong, pod), pvc_root=None, max_workers=1
    )
    with pytest.raises(SourceAccessDenied) as caught:
        quiet.list_files()
    assert "401" in caught.value.message and INVALID_CREDENTIALS not in caught.value.message
    # the control: the pod's own hub is quoted
    own = env_defaults({"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_not_the_hubs_token"})
    said = open_source(
        "org/public-model", resolve_options(parse_source("org/public-model"), None, own), pvc_root=None, max_workers=1
    )
    with pytest.raises(SourceAccessDenied) as caught:
        said.list_files()
    assert INVALID_CREDENTIALS in caught.value.message
