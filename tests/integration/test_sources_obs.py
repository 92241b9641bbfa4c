"""The OBS source (esdk-obs-python, path-style SigV4 for a loopback endpoint) against moto's S3 server.

moto stands in for OBS through the S3-compatible protocol OBS also speaks. One deviation shapes these tests: the
OBS SDK sends a listing's `prefix=a/` unescaped but signs it escaped (`a%2F`); OBS and S3 accept that, moto's
SigV4 check does not. So listings run with moto's authentication off, and credentials are tested on object reads
(the same signer, no query string), with authentication on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from outrider.backoff import StoreRetries
from outrider.errors import InvalidSource, SourceAccessDenied, SourceNotFound, SourceTransientError
from outrider.sources import Source, SourceOptions, open_source
from outrider.sources.base import PIECE_SIZE
from tests.integration.stores import moto_fixture, open_bucket
from tests.servers.faults import FaultServer
from tests.servers.moto import ADMIN, REGION, MotoServer, free_port
from tests.servers.tree import BIG, BIG_RANGES, BIG_SIZE, md5_hex, model_tree, read_all

BUCKET = "obs-models"
PREFIX = "qwen/0.5b"
TREE = model_tree()
SECRET_MARK = "obs-s3cr3t-never-shown"


def seed_sealed(server: MotoServer) -> None:
    # moto keeps the MD5 as the ETag of an encrypted object; OBS does not (an encrypted object's ETag is no MD5).
    server.client("s3", ADMIN).put_object(
        Bucket=BUCKET, Key="sealed/w.bin", Body=b"sealed", ServerSideEncryption="aws:kms"
    )


moto = moto_fixture(BUCKET, PREFIX, TREE, then=seed_sealed)


@pytest.fixture
def auth(moto: MotoServer) -> Iterator[None]:
    moto.enforce_auth(True)
    try:
        yield
    finally:
        moto.enforce_auth(False)


def obs_source(moto: MotoServer, source: str = f"obs://{BUCKET}/{PREFIX}", **changes: Any) -> Source:
    return open_bucket(source, moto.url, moto.reader, REGION, **changes)


def test_lists_the_tree_with_sizes_and_md5(moto: MotoServer) -> None:
    files = {f.path: f for f in obs_source(moto).list_files()}
    assert set(files) == set(TREE)
    for path, data in TREE.items():
        checksum = files[path].checksum
        assert files[path].size == len(data)
        assert checksum is not None and (checksum.algorithm, checksum.value) == ("md5", md5_hex(data))
        assert files[path].version == md5_hex(data)


def test_an_encrypted_object_gets_no_md5_from_its_etag(moto: MotoServer) -> None:
    files = obs_source(moto, f"obs://{BUCKET}/sealed").list_files()
    assert [(f.path, f.size, f.checksum) for f in files] == [("w.bin", 6, None)]
    assert files[0].version == md5_hex(b"sealed")  # still what tells a changed object


def test_listing_follows_markers_across_pages(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import outrider.sources.obs as obs_module

    monkeypatch.setattr(obs_module, "_LIST_PAGE", 2)
    assert {f.path for f in obs_source(moto).list_files()} == set(TREE)


@pytest.mark.parametrize(("start", "end"), BIG_RANGES)
def test_reads_ranges_byte_exact_with_auth(moto: MotoServer, auth: None, start: int, end: int) -> None:
    assert read_all(obs_source(moto), BIG, start, end) == TREE[BIG][start:end]


def test_reads_nested_and_empty_files(moto: MotoServer) -> None:
    source = obs_source(moto)
    data = TREE["tokenizer/tokenizer.json"]
    assert read_all(source, "tokenizer/tokenizer.json", 0, len(data)) == data
    assert read_all(source, "notes/empty.txt", 0, 0) == b""


def test_wrong_secret_is_access_denied_without_the_secret(moto: MotoServer, auth: None) -> None:
    source = obs_source(moto, secret_key=SECRET_MARK)
    with pytest.raises(SourceAccessDenied) as info:
        list(source.read_range(BIG, 0, 10))
    assert "SignatureDoesNotMatch" in info.value.message
    assert SECRET_MARK not in info.value.message and SECRET_MARK not in repr(source)
    assert read_all(obs_source(moto), BIG, 0, 10) == TREE[BIG][:10]  # the control: right keys, same server


def test_unknown_access_key_is_access_denied(moto: MotoServer, auth: None) -> None:
    with pytest.raises(SourceAccessDenied, match="InvalidAccessKeyId"):
        list(obs_source(moto, access_key="AKIANOSUCHKEY0000000").read_range(BIG, 0, 10))


def test_missing_bucket_prefix_and_key_are_not_found(moto: MotoServer) -> None:
    with pytest.raises(SourceNotFound, match="NoSuchBucket"):
        obs_source(moto, "obs://no-such-bucket/x").list_files()
    with pytest.raises(SourceNotFound, match="no objects"):
        obs_source(moto, f"obs://{BUCKET}/no/such/prefix").list_files()
    with pytest.raises(SourceNotFound, match="NoSuchKey"):
        list(obs_source(moto).read_range("missing.bin", 0, 10))


def test_server_errors_are_transient(moto: MotoServer, fast_store_retries: StoreRetries) -> None:
    faults = FaultServer(500)
    faults.start()
    try:
        source = obs_source(moto, endpoint=faults.url)
        with pytest.raises(SourceTransientError, match="InternalError"):
            source.list_files()
        with pytest.raises(SourceTransientError, match="InternalError"):
            list(source.read_range(BIG, 0, 10))
        # The SDK's own retries are off: the listing is retried by outrider, the read once (the engine retries it).
        assert faults.requests == fast_store_retries.attempts + 1
    finally:
        faults.stop()


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_refused_connection_is_transient(moto: MotoServer) -> None:
    source = obs_source(moto, endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceTransientError):
        source.list_files()
    with pytest.raises(SourceTransientError):
        list(source.read_range(BIG, 0, 10))


def test_obs_needs_an_endpoint() -> None:
    with pytest.raises(InvalidSource) as info:
        open_source("obs://bucket/x", SourceOptions(), pvc_root=None, max_workers=1)
    assert info.value.field == "config"


def test_stopping_a_read_early_then_reading_again(moto: MotoServer) -> None:
    source = obs_source(moto)
    for _ in range(3):
        reader = source.read_range(BIG, 0, BIG_SIZE)
        assert len(next(iter(reader))) == PIECE_SIZE
        del reader  # the generator is finalized, its finally closes the response
    assert read_all(source, BIG, 5, 50) == TREE[BIG][5:50]
