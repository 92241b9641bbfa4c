"""The TOS source (the `tos` SDK, custom-domain addressing for a loopback endpoint) against the local TOS server,
which verifies every request's TOS4-HMAC-SHA256 signature."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from outrider.errors import InvalidSource, SourceAccessDenied, SourceNotFound, SourceTransientError
from outrider.sources import Source, SourceOptions, open_source
from tests.integration.stores import open_bucket
from tests.servers.moto import free_port
from tests.servers.tos import TosServer, crc64ecma
from tests.servers.tree import BIG, BIG_RANGES, model_tree, read_all

BUCKET = "tos-models"
PREFIX = "deepseek/r1"
REGION = "cn-beijing"
AK, SK = "AKLTlocalreader", "tos-secret-key-value"
TREE = model_tree()
SECRET_MARK = "tos-s3cr3t-never-shown"


@pytest.fixture(scope="module")
def server() -> Iterator[TosServer]:
    tos_server = TosServer(bucket=BUCKET, region=REGION, credentials={AK: SK}, max_page=2)
    for path, data in TREE.items():
        tos_server.put(f"{PREFIX}/{path}", data)
    tos_server.put(f"{PREFIX}-sibling/x.bin", b"x")
    tos_server.put(f"{PREFIX}/folder-marker/", b"")
    tos_server.start()
    yield tos_server
    tos_server.stop()


@pytest.fixture(autouse=True)
def healthy(server: TosServer) -> Iterator[None]:
    server.fail_status, server.bucket_exists = None, True
    yield
    server.fail_status, server.bucket_exists = None, True


def tos_source(server: TosServer, source: str = f"tos://{BUCKET}/{PREFIX}", **changes: Any) -> Source:
    return open_bucket(source, server.url, (AK, SK), REGION, **changes)


def test_lists_the_tree_across_pages_with_crc64(server: TosServer) -> None:
    files = {f.path: f for f in tos_source(server).list_files()}  # max_page=2: several continuation tokens
    assert set(files) == set(TREE)
    for path, data in TREE.items():
        checksum = files[path].checksum
        assert files[path].size == len(data)
        assert checksum is not None and (checksum.algorithm, checksum.value) == ("crc64ecma", str(crc64ecma(data)))
        assert files[path].version


def test_requests_are_signed_with_the_access_key(server: TosServer) -> None:
    server.seen_auth.clear()
    tos_source(server).list_files()
    assert server.seen_auth
    assert all(a is not None and a.startswith(f"TOS4-HMAC-SHA256 Credential={AK}/") for a in server.seen_auth)


@pytest.mark.parametrize(("start", "end"), BIG_RANGES)
def test_reads_ranges_byte_exact(server: TosServer, start: int, end: int) -> None:
    assert read_all(tos_source(server), BIG, start, end) == TREE[BIG][start:end]


def test_reads_nested_and_empty_files(server: TosServer) -> None:
    source = tos_source(server)
    data = TREE["tokenizer/merges/merges.txt"]
    assert read_all(source, "tokenizer/merges/merges.txt", 0, len(data)) == data
    assert read_all(source, "notes/empty.txt", 0, 0) == b""


def test_wrong_secret_is_access_denied_without_the_secret(server: TosServer) -> None:
    source = tos_source(server, secret_key=SECRET_MARK)
    with pytest.raises(SourceAccessDenied) as info:
        source.list_files()
    assert "SignatureDoesNotMatch" in info.value.message
    with pytest.raises(SourceAccessDenied):
        list(source.read_range(BIG, 0, 10))
    assert SECRET_MARK not in info.value.message and SECRET_MARK not in repr(source)


def test_unknown_key_and_unsigned_requests_are_access_denied(server: TosServer) -> None:
    with pytest.raises(SourceAccessDenied, match="InvalidAccessKeyId"):
        tos_source(server, access_key="AKLTnosuchkey").list_files()
    with pytest.raises(SourceAccessDenied, match="AccessDenied"):
        tos_source(server, access_key=None, secret_key=None).list_files()


def test_wrong_region_is_access_denied(server: TosServer) -> None:
    with pytest.raises(SourceAccessDenied):
        tos_source(server, region="cn-shanghai").list_files()


def test_missing_bucket_prefix_and_key_are_not_found(server: TosServer) -> None:
    with pytest.raises(SourceNotFound, match="no objects"):
        tos_source(server, f"tos://{BUCKET}/no/such/prefix").list_files()
    with pytest.raises(SourceNotFound, match="NoSuchKey"):
        list(tos_source(server).read_range("missing.bin", 0, 10))
    server.bucket_exists = False
    with pytest.raises(SourceNotFound, match="NoSuchBucket"):
        tos_source(server).list_files()


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_server_errors_are_transient(server: TosServer) -> None:
    server.fail_status = 500
    with pytest.raises(SourceTransientError, match="InternalError"):
        tos_source(server).list_files()
    with pytest.raises(SourceTransientError, match="InternalError"):
        list(tos_source(server).read_range(BIG, 0, 10))


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_refused_connection_is_transient() -> None:
    options = SourceOptions(access_key=AK, secret_key=SK, endpoint=f"http://127.0.0.1:{free_port()}", region=REGION)
    source = open_source(f"tos://{BUCKET}/{PREFIX}", options, pvc_root=None, max_workers=1)
    with pytest.raises(SourceTransientError):
        source.list_files()
    with pytest.raises(SourceTransientError):
        list(source.read_range(BIG, 0, 10))


def test_tos_needs_an_endpoint_and_a_region() -> None:
    for options in (SourceOptions(region=REGION), SourceOptions(endpoint="https://tos-cn-beijing.volces.com")):
        with pytest.raises(InvalidSource) as info:
            open_source("tos://bucket/x", options, pvc_root=None, max_workers=1)
        assert info.value.field == "config"
