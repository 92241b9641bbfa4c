"""The S3 source against moto's S3 server, with SigV4 authentication enforced."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from outrider.backoff import StoreRetries
from outrider.errors import (
    SourceAccessDenied,
    SourceNotFound,
    SourceThrottled,
    SourceTransientError,
    VerificationFailed,
)
from outrider.sources import Source
from outrider.sources.base import PIECE_SIZE, Checksum
from outrider.sources.s3 import parts_checksum
from outrider.transfer import download, state
from outrider.transfer.engine import Transfer, TransferOptions
from outrider.transfer.lock import LOCK_NAME
from outrider.transfer.plan import Filters
from outrider.transfer.progress import Progress
from tests.integration.stores import moto_fixture, open_bucket
from tests.read_backs import count_read_backs
from tests.servers.checksum_leak import ChecksumLeakProxy
from tests.servers.faults import FaultServer, ThrottlingProxy
from tests.servers.moto import ADMIN, REGION, MotoServer, free_port
from tests.servers.tree import BIG, BIG_RANGES, BIG_SIZE, md5_hex, model_tree, read_all

BUCKET = "models"
PREFIX = "llama/7b"
TREE = model_tree()
SECRET_MARK = "s3cr3t-never-shown"


# A bucket whose objects carry S3's additional checksums in the ways uploads leave them.
SUMS = "sums"
SUM_FILES = {name: os.urandom(3 * PIECE_SIZE + 17) for name in ("plain", "crc32", "sha256", "multipart", "kms")}
WRONG = os.urandom(2 * PIECE_SIZE)
MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last (boto3 raises a smaller multipart_chunksize to it)
PARTS = {"aligned": os.urandom(2 * MIN_PART + 99), "other": os.urandom(MIN_PART + 10)}
LISTER: list[str] = []  # access key and secret of a user that may list but not read


def seed_checksums(server: MotoServer) -> None:
    s3 = server.client("s3", ADMIN)  # botocore's default: a CRC32 with every upload
    # Checksums only where an operation requires one: what older SDKs and many other tools upload.
    plain = boto3.session.Session().client(
        "s3",
        endpoint_url=server.url,
        region_name=REGION,
        aws_access_key_id=ADMIN[0],
        aws_secret_access_key=ADMIN[1],
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )
    s3.create_bucket(Bucket=SUMS)
    plain.put_object(Bucket=SUMS, Key="m/plain", Body=SUM_FILES["plain"])
    # moto keeps the MD5 as the ETag of a KMS-encrypted object; real S3 does not (the ETag is then no MD5).
    plain.put_object(Bucket=SUMS, Key="m/kms", Body=SUM_FILES["kms"], ServerSideEncryption="aws:kms")
    s3.put_object(Bucket=SUMS, Key="m/crc32", Body=SUM_FILES["crc32"])
    s3.put_object(Bucket=SUMS, Key="m/sha256", Body=SUM_FILES["sha256"], ChecksumAlgorithm="SHA256")
    parts = TransferConfig(multipart_threshold=5 * PIECE_SIZE // 2, multipart_chunksize=5 * PIECE_SIZE // 2)
    s3.upload_fileobj(io.BytesIO(SUM_FILES["multipart"]), SUMS, "m/multipart", Config=parts)
    # Parts of S3's smallest size, which the download's chunks are cut to line up with in the test below.
    smallest = TransferConfig(multipart_threshold=MIN_PART, multipart_chunksize=MIN_PART)
    plain.upload_fileobj(io.BytesIO(PARTS["aligned"]), SUMS, "mp/aligned", Config=smallest)
    plain.upload_fileobj(io.BytesIO(PARTS["other"]), SUMS, "mp-other/o.bin", Config=smallest)
    # moto stores a checksum it is given without checking it (real S3 refuses the upload: BadDigest). Here that
    # stands for bytes that changed between the store's checksum and us.
    wrong = base64.b64encode((zlib.crc32(WRONG) ^ 1).to_bytes(4, "big")).decode()
    s3.put_object(Bucket=SUMS, Key="bad/w.bin", Body=WRONG, ChecksumAlgorithm="CRC32", ChecksumCRC32=wrong)


def seed_and_lock(server: MotoServer) -> None:
    """The checksum bucket and a user who may only list; then every request must be signed."""
    seed_checksums(server)
    LISTER.extend(server.create_user("lister", ["s3:ListBucket"]))
    server.enforce_auth(True)


moto = moto_fixture(BUCKET, PREFIX, TREE, {"other/y.bin": b"y"}, then=seed_and_lock)  # another tree beside the model


def s3_source(
    moto: MotoServer, source: str = f"s3://{BUCKET}/{PREFIX}", *, max_workers: int = 4, **changes: Any
) -> Source:
    return open_bucket(source, moto.url, moto.reader, REGION, max_workers=max_workers, **changes)


def test_lists_the_tree_with_sizes_checksums_and_etag_versions(moto: MotoServer) -> None:
    source = s3_source(moto)
    files = {f.path: f for f in source.list_files()}
    assert set(files) == set(TREE)
    for path, data in TREE.items():
        assert files[path].size == len(data)
        checksum = files[path].checksum
        assert checksum is not None
        # Uploaded by a current boto3, so each object also has a CRC32: cheaper to verify than the ETag's MD5.
        assert (checksum.algorithm, checksum.value) == ("crc32", f"{zlib.crc32(data):08x}")
        assert files[path].version == md5_hex(data)
    assert source.display == f"s3://{BUCKET}/{PREFIX}"
    assert source.revision is None


def test_each_object_gets_the_cheapest_whole_object_checksum_it_has(moto: MotoServer) -> None:
    files = {f.path: f.checksum for f in s3_source(moto, f"s3://{SUMS}/m").list_files()}
    checksums = {path: (c.algorithm, c.value) if c else None for path, c in files.items()}
    assert checksums == {
        "plain": ("md5", md5_hex(SUM_FILES["plain"])),  # no additional checksum: the single-part ETag
        "crc32": ("crc32", f"{zlib.crc32(SUM_FILES['crc32']):08x}"),
        "sha256": ("sha256", hashlib.sha256(SUM_FILES["sha256"]).hexdigest()),
        # A multipart ETag is the MD5 of the parts' MD5s: part 1's size (a HEAD) lets it be computed.
        "multipart": ("md5-parts", multipart_etag(SUM_FILES["multipart"], MIN_PART)),
        "kms": None,  # encrypted with a KMS key: its ETag is not an MD5 on S3, and it has no other checksum
    }


def test_a_user_who_may_list_but_not_read_still_gets_the_listing(moto: MotoServer) -> None:
    source = s3_source(moto, f"s3://{SUMS}/m", access_key=LISTER[0], secret_key=LISTER[1])
    files = {f.path: f.checksum for f in source.list_files()}
    # HeadObject was refused, so the ETag's MD5 stands; the read will be refused in the job, as for any object.
    assert files["crc32"] is not None and files["crc32"].algorithm == "md5"
    with pytest.raises(SourceAccessDenied):
        read_all(source, "crc32", 0, 1)


async def fetch_s3(moto: MotoServer, uri: str, dest: Path, *, chunk_size: int = 2 * PIECE_SIZE) -> None:
    source = s3_source(moto, uri)
    options = TransferOptions(workers=4, chunk_size=chunk_size)
    prepared = await trio.to_thread.run_sync(download.prepare, source, Filters(), dest, options.chunk_size)
    progress = download.progress_for(prepared, Progress())
    await download.run(prepared, Transfer(options), progress, threading.Event())


def multipart_etag(data: bytes, part_size: int) -> str:
    parts = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


async def test_downloads_verify_against_the_checksums_s3_keeps(moto: MotoServer, tmp_path: Path) -> None:
    await fetch_s3(moto, f"s3://{SUMS}/m", tmp_path / "good")
    for name, data in SUM_FILES.items():
        assert (tmp_path / "good" / name).read_bytes() == data
    with pytest.raises(VerificationFailed, match="crc32 mismatch"):
        await fetch_s3(moto, f"s3://{SUMS}/bad", tmp_path / "bad")
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [state.RECORD_NAME, LOCK_NAME]


async def test_a_multipart_etag_is_verified_with_parts_hashed_by_the_chunks_writers(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [listed] = s3_source(moto, f"s3://{SUMS}/mp").list_files()
    assert listed.checksum == Checksum("md5-parts", multipart_etag(PARTS["aligned"], MIN_PART), MIN_PART)
    read_back = count_read_backs(monkeypatch)
    await fetch_s3(moto, f"s3://{SUMS}/mp", tmp_path / "mp", chunk_size=MIN_PART)  # a part per chunk
    assert (tmp_path / "mp" / "aligned").read_bytes() == PARTS["aligned"]
    assert read_back == []  # every part's MD5 came from the thread that wrote it
    # Chunks that cut parts in two: the same ETag, computed in file order by the follower instead.
    await fetch_s3(moto, f"s3://{SUMS}/mp", tmp_path / "follow", chunk_size=2 * PIECE_SIZE)
    assert (tmp_path / "follow" / "aligned").read_bytes() == PARTS["aligned"]
    assert read_back and read_back[0][0] == 0


def test_a_multipart_etag_is_used_only_when_part_one_agrees_with_it(moto: MotoServer) -> None:
    [listed] = s3_source(moto, f"s3://{SUMS}/mp-other").list_files()
    etag = multipart_etag(PARTS["other"], MIN_PART)
    assert listed.checksum == Checksum("md5-parts", etag, MIN_PART)
    size = len(PARTS["other"])
    part_one = {"ContentLength": MIN_PART, "PartsCount": 2}
    assert parts_checksum(etag, size, part_one) == listed.checksum
    # Parts of some other size, or another count, than the ETag's: its MD5s could not be cut where the store did.
    assert parts_checksum(etag, size, {**part_one, "ContentLength": size // 3}) is None
    assert parts_checksum(etag, size, {**part_one, "PartsCount": 3}) is None
    assert parts_checksum(etag.split("-")[0], size, part_one) is None  # a single-part ETag


def test_lists_a_whole_bucket(moto: MotoServer) -> None:
    paths = {f.path for f in s3_source(moto, f"s3://{BUCKET}").list_files()}
    assert f"{PREFIX}/{BIG}" in paths and "other/y.bin" in paths


@pytest.mark.parametrize(("start", "end"), BIG_RANGES)
def test_reads_ranges_byte_exact(moto: MotoServer, start: int, end: int) -> None:
    assert read_all(s3_source(moto), BIG, start, end) == TREE[BIG][start:end]


def test_reads_small_nested_and_empty_ranges(moto: MotoServer) -> None:
    source = s3_source(moto)
    data = TREE["tokenizer/merges/merges.txt"]
    assert read_all(source, "tokenizer/merges/merges.txt", 0, len(data)) == data
    assert read_all(source, "notes/empty.txt", 0, 0) == b""


def test_parallel_reads_share_one_client(moto: MotoServer) -> None:
    source = s3_source(moto)
    spans = [(i * 700_000, min(BIG_SIZE, (i + 1) * 700_000)) for i in range(5)]
    results: dict[int, bytes] = {}

    def worker(i: int) -> None:
        results[i] = read_all(source, BIG, *spans[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(spans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b"".join(results[i] for i in range(len(spans))) == TREE[BIG][: spans[-1][1]]


def test_ranged_reads_do_not_ask_for_checksums(moto: MotoServer) -> None:
    # A store may answer a ranged read that asks for checksums with the whole object's (old Ceph RGW did): checking
    # the range against it fails, and costs CPU on every byte. outrider verifies whole files itself, so it never asks.
    whole = base64.b64encode(zlib.crc32(TREE[BIG]).to_bytes(4, "big")).decode()
    proxy = ChecksumLeakProxy(moto.url, {f"/{BUCKET}/{PREFIX}/{BIG}": whole})
    proxy.start()
    try:
        source = s3_source(moto, endpoint=proxy.url)
        assert read_all(source, BIG, 100, 200_000) == TREE[BIG][100:200_000]
        assert read_all(source, BIG, 0, BIG_SIZE) == TREE[BIG]
    finally:
        proxy.stop()
    assert proxy.leaked == 0


def test_stopping_a_read_early_releases_the_connection(moto: MotoServer) -> None:
    source = s3_source(moto, max_workers=1)
    for _ in range(8):  # more than the pool holds: a leaked connection per early stop would show
        reader = source.read_range(BIG, 0, BIG_SIZE)
        assert isinstance(reader, Generator)  # so the caller can close it when it stops early
        assert len(next(reader)) == PIECE_SIZE
        reader.close()
    assert read_all(source, BIG, 10, 20) == TREE[BIG][10:20]


def test_wrong_secret_is_access_denied_without_the_secret(moto: MotoServer) -> None:
    source = s3_source(moto, secret_key=SECRET_MARK)
    with pytest.raises(SourceAccessDenied) as info:
        source.list_files()
    assert "SignatureDoesNotMatch" in info.value.message
    with pytest.raises(SourceAccessDenied):
        list(source.read_range(BIG, 0, 10))
    assert SECRET_MARK not in info.value.message and SECRET_MARK not in repr(source)


def test_unknown_access_key_is_access_denied(moto: MotoServer) -> None:
    with pytest.raises(SourceAccessDenied) as info:
        s3_source(moto, access_key="AKIANOSUCHKEY0000000").list_files()
    assert "InvalidAccessKeyId" in info.value.message


def test_missing_bucket_prefix_and_key_are_not_found(moto: MotoServer) -> None:
    with pytest.raises(SourceNotFound, match="NoSuchBucket"):
        s3_source(moto, "s3://no-such-bucket/x").list_files()
    with pytest.raises(SourceNotFound, match="no objects"):
        s3_source(moto, f"s3://{BUCKET}/no/such/prefix").list_files()
    with pytest.raises(SourceNotFound, match="NoSuchKey"):
        list(s3_source(moto).read_range("no-such-file.bin", 0, 10))


def test_default_credential_chain_is_used_when_ambient_credentials_are_allowed(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.reader[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.reader[1])
    source = s3_source(moto, access_key=None, secret_key=None, ambient_credentials=True)
    assert {f.path for f in source.list_files()} == set(TREE)


@pytest.mark.parametrize("ambient", [False, True])
def test_without_ambient_credentials_requests_go_unsigned(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, ambient: bool
) -> None:
    """A request that named a foreign endpoint: boto3 must not pick up the pod's keys from env or IRSA."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPODKEY0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_MARK)
    foreign = FaultServer(403)
    foreign.start()
    try:
        source = s3_source(moto, endpoint=foreign.url, access_key=None, secret_key=None, ambient_credentials=ambient)
        with pytest.raises(SourceAccessDenied):
            source.list_files()
        with pytest.raises(SourceAccessDenied):
            list(source.read_range(BIG, 0, 1))
    finally:
        foreign.stop()
    if ambient:  # the control: with ambient credentials allowed, the env keys do travel
        assert all(a is not None and "AKIAPODKEY0000000000" in a for a in foreign.seen_auth)
    else:
        assert foreign.seen_auth == [None, None]


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(moto: MotoServer, status: int, fast_store_retries: StoreRetries) -> None:
    faults = FaultServer(status)
    faults.start()
    try:
        source = s3_source(moto, endpoint=faults.url)
        with pytest.raises(SourceTransientError, match=str(status) if status == 500 else "SlowDown"):
            source.list_files()
        with pytest.raises(SourceTransientError):
            list(source.read_range(BIG, 0, 10))
        # A listing is retried here (the SDK's retries are off); a read once: retrying it is the transfer engine's.
        assert faults.requests == fast_store_retries.attempts + 1
    finally:
        faults.stop()


@pytest.mark.parametrize(("status", "retry_after", "wait"), [(503, "2", 2.0), (429, None, None), (500, "3", 3.0)])
def test_throttling_answers_carry_the_wait_the_store_named(
    moto: MotoServer, status: int, retry_after: str | None, wait: float | None, fast_store_retries: StoreRetries
) -> None:
    faults = FaultServer(status, retry_after=retry_after)
    faults.start()
    try:
        source = s3_source(moto, endpoint=faults.url)
        for call in (source.list_files, lambda: list(source.read_range(BIG, 0, 10))):
            with pytest.raises(SourceThrottled) as info:
                call()
            assert info.value.retry_after == wait
    finally:
        faults.stop()


def test_a_plain_500_is_transient_but_no_throttling(moto: MotoServer) -> None:
    faults = FaultServer(500)
    faults.start()
    try:
        with pytest.raises(SourceTransientError) as info:
            list(s3_source(moto, endpoint=faults.url).read_range(BIG, 0, 10))
        assert not isinstance(info.value, SourceThrottled)
    finally:
        faults.stop()


async def test_a_slow_down_holds_every_read_of_the_download_for_its_retry_after(
    moto: MotoServer, tmp_path: Path
) -> None:
    """The first ranged GET is answered 503 SlowDown, Retry-After: 1. The download waits that second before any
    new read, not only the throttled chunk's: N pods x workers retrying at once is how a throttle becomes a storm."""
    proxy = ThrottlingProxy(moto.url, throttle=1, retry_after="1", delay=0.1)
    proxy.start()
    try:
        source = s3_source(moto, endpoint=proxy.url)
        options = TransferOptions(workers=4, chunk_size=256 * 1024, backoff_initial=0.01, backoff_max=0.05)
        prepared = await trio.to_thread.run_sync(
            download.prepare, source, Filters(), tmp_path / "m", options.chunk_size
        )
        await download.run(prepared, Transfer(options), download.progress_for(prepared, Progress()), threading.Event())
    finally:
        proxy.stop()
    assert (tmp_path / "m" / BIG).read_bytes() == TREE[BIG]
    [throttled] = proxy.throttled
    # Reads already on their way when the answer came may arrive just after it; none starts within the second.
    early = [t - throttled for t in proxy.gets if throttled + 0.2 < t < throttled + 1.0]
    assert early == []
    assert max(proxy.gets) >= throttled + 1.0
    chunks = sum(-(-len(data) // options.chunk_size) for data in TREE.values() if data)
    assert len(proxy.gets) == chunks + 1  # the one throttled read was retried once, nothing more


def test_throttled_listings_and_heads_are_retried_after_their_retry_after(moto: MotoServer) -> None:
    # The real policy (STORE_RETRIES, RETRY_AFTER_CAP): this test is about its waits.
    """The SDK's own retries are off: without outrider's, one 503 SlowDown on a listing or a HEAD among a model's
    files failed the whole download. They wait as a throttled chunk read does: at least the Retry-After."""
    proxy = ThrottlingProxy(moto.url, throttle=0, retry_after="1", throttle_lists=1, throttle_heads=2)
    proxy.start()
    try:
        files = {f.path: f for f in s3_source(moto, endpoint=proxy.url).list_files()}
    finally:
        proxy.stop()
    assert set(files) == set(TREE)
    throttled = [(t, method) for t, method, held in proxy.metadata if held]
    assert [method for _, method in throttled] == ["GET", "HEAD", "HEAD"]  # the listing, then two HEADs
    listing, retry = proxy.metadata[0][0], proxy.metadata[1][0]
    assert retry - listing >= 1.0  # the listing's retry waited out the Retry-After
    heads = [t for t, method, held in proxy.metadata if method == "HEAD" and not held]
    assert len(heads) == sum(1 for f in files.values() if f.checksum is not None)  # each asked until answered


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_refused_connection_is_transient(moto: MotoServer) -> None:
    source = s3_source(moto, endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceTransientError) as info:
        source.list_files()
    assert moto.reader[1] not in info.value.message


def test_path_escape_in_a_read_is_refused(moto: MotoServer) -> None:
    source = s3_source(moto)
    for bad in ("../other/y.bin", "/abs", "a/./b", ""):
        with pytest.raises(Exception, match="path"):
            list(source.read_range(bad, 0, 1))


def test_listed_checksum_is_over_the_served_bytes(moto: MotoServer) -> None:
    source = s3_source(moto)
    served = read_all(source, BIG, 0, BIG_SIZE)
    listed = {f.path: f for f in source.list_files()}[BIG].checksum
    assert listed is not None and listed.value == f"{zlib.crc32(served):08x}"
