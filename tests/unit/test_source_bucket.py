"""What BucketSource does for every bucket store, pinned against a store that is a dict: the size of a new store."""

from __future__ import annotations

import io
from collections.abc import Generator

import pytest

from outrider.errors import SourceAccessDenied, SourceError, SourceNotFound, SourceThrottled, SourceTransientError
from outrider.sources._common import retry_after_seconds
from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile
from outrider.sources.bucket import BucketSource, Failure, Listed, Page, RangeBody
from outrider.sources.options import SourceOptions
from outrider.sources.uri import BucketRef

SECRET = "dict-secret-never-shown"
MD5 = Checksum("md5", "0" * 32)


class Refused(Exception):
    """The dict store's error answer."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"{code} ({SECRET})")
        self.code, self.status = code, status


class DictStore(BucketSource):
    """Keys in a dict, listed `page_size` at a time; `fail` maps a key (or 'list') to what the store raises."""

    def __init__(self, objects: dict[str, bytes], prefix: str = "m", page_size: int = 2) -> None:
        super().__init__(BucketRef("dict", "bucket", prefix), SourceOptions(secret_key=SECRET))
        self.objects = objects
        self.page_size = page_size
        self.fail: dict[str, Exception] = {}
        self.heads: list[str] = []
        self.bodies: list[io.BytesIO] = []
        self.stuck = False  # a broken store: every page says "more, from here"

    def _list_page(self, prefix: str, cursor: str | None) -> Page:
        if "list" in self.fail:
            raise self.fail["list"]
        if self.stuck:
            return Page([], "again")
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        start = 0 if cursor is None else keys.index(cursor) + 1
        page = keys[start : start + self.page_size]
        objects = [Listed(k, len(self.objects[k]), MD5, "v1", ask=k.endswith(".ask")) for k in page]
        more = start + self.page_size < len(keys)
        return Page(objects, page[-1] if more else None)

    def _head_checksum(self, key: str, listed: RemoteFile) -> Checksum | None:
        self.heads.append(key)
        if key in self.fail:
            raise self.fail[key]
        return None  # the store says the listed MD5 is not one

    def _open_range(self, key: str, start: int, end: int) -> RangeBody:
        if key in self.fail:
            raise self.fail[key]
        self.bodies.append(io.BytesIO(self.objects[key][start:end]))
        return self.bodies[-1]

    def _failure(self, exc: Exception) -> Failure | None:
        if isinstance(exc, Refused):
            return Failure.answer(exc.code, exc.status, str(exc))
        if isinstance(exc, ConnectionError):
            return Failure.transient(str(exc))
        return None

    def close(self) -> None:
        pass


def tree() -> dict[str, bytes]:
    return {
        "m/a.bin": b"a",
        "m/dir/": b"",  # a folder marker
        "m/dir/b.bin": b"bb",
        "m/dir/c.ask": b"ccc",
        "m/e.bin": b"",
        "m-sibling/x.bin": b"x",
    }


def test_the_listing_follows_every_page_and_maps_keys_to_paths() -> None:
    files = DictStore(tree(), page_size=1).list_files()
    assert [(f.path, f.size, f.version) for f in files] == [
        ("a.bin", 1, "v1"),
        ("dir/b.bin", 2, "v1"),
        ("dir/c.ask", 3, "v1"),
        ("e.bin", 0, "v1"),
    ]


def test_only_objects_marked_ask_get_a_metadata_request() -> None:
    store = DictStore(tree())
    checksums = {f.path: f.checksum for f in store.list_files()}
    assert store.heads == ["m/dir/c.ask"]
    assert checksums == {"a.bin": MD5, "dir/b.bin": MD5, "dir/c.ask": None, "e.bin": MD5}


@pytest.mark.parametrize("refusal", [Refused("AccessDenied", 403), Refused("NoSuchKey", 404)])
def test_a_refused_metadata_request_keeps_the_listed_checksum(refusal: Refused) -> None:
    store = DictStore(tree())
    store.fail["m/dir/c.ask"] = refusal
    assert {f.path: f.checksum for f in store.list_files()}["dir/c.ask"] == MD5


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
def test_a_failed_metadata_request_fails_the_listing() -> None:
    store = DictStore(tree())
    store.fail["m/dir/c.ask"] = ConnectionError("reset")
    with pytest.raises(SourceTransientError, match=r"dict://bucket/m: head dir/c.ask: reset"):
        store.list_files()


def test_a_cursor_handed_back_unchanged_ends_the_listing_with_an_error() -> None:
    store = DictStore(tree(), page_size=100)
    store.stuck = True
    with pytest.raises(SourceError, match="same page cursor"):
        store.list_files()


def test_an_empty_prefix_is_not_found_and_an_escaping_key_is_refused() -> None:
    with pytest.raises(SourceNotFound, match="no objects"):
        DictStore(tree(), prefix="nothing").list_files()
    with pytest.raises(SourceError, match="refusing"):
        DictStore({"m/a/../b": b"x"}).list_files()


@pytest.mark.usefixtures("fast_store_retries")  # the mapping, not the retry policy
@pytest.mark.parametrize(
    ("raised", "error", "words"),
    [
        (Refused("SignatureDoesNotMatch", 400), SourceAccessDenied, "SignatureDoesNotMatch"),
        (Refused("", 403), SourceAccessDenied, "403"),
        (Refused("NoSuchBucket", 400), SourceNotFound, "NoSuchBucket"),
        (Refused("SlowDown", 503), SourceThrottled, "SlowDown"),
        (Refused("", 429), SourceThrottled, "429"),
        (Refused("RequestLimitExceeded", 400), SourceThrottled, "RequestLimitExceeded"),
        (Refused("InternalError", 500), SourceTransientError, "InternalError"),
        (Refused("Odd", 400), SourceError, "Odd"),
        (ConnectionError(f"refused {SECRET}"), SourceTransientError, "refused"),
        (ValueError(f"bad {SECRET}"), SourceError, "ValueError: bad"),
    ],
)
def test_failures_map_onto_the_error_tree_without_the_secret(
    raised: Exception, error: type[SourceError], words: str
) -> None:
    store = DictStore(tree())
    store.fail["list"] = raised
    with pytest.raises(SourceError) as info:
        store.list_files()
    assert type(info.value) is error
    assert info.value.message.startswith(f"dict://bucket/m: list: {words}")
    assert SECRET not in info.value.message


def test_reads_come_in_pieces_and_close_the_body_when_stopped_early() -> None:
    big = bytes(range(256)) * (PIECE_SIZE // 128)  # two pieces
    store = DictStore({"m/big": big})
    assert b"".join(store.read_range("big", 3, len(big))) == big[3:]
    reader = store.read_range("big", 0, len(big))
    assert isinstance(reader, Generator)  # so the caller can close it when it stops early
    assert len(next(reader)) == PIECE_SIZE
    reader.close()
    assert all(body.closed for body in store.bodies)
    assert list(store.read_range("../escape", 0, 0)) == []  # an empty range reads nothing, asks nothing


def test_a_short_body_and_a_refused_read_are_mapped() -> None:
    store = DictStore({"m/f": b"abc"})
    with pytest.raises(SourceTransientError, match="3 of 10"):
        list(store.read_range("f", 0, 10))
    store.fail["m/f"] = Refused("NoSuchKey", 404)
    with pytest.raises(SourceNotFound, match="dict://bucket/m: read f: NoSuchKey"):
        list(store.read_range("f", 0, 1))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Thu, 01 Jan 1970 00:00:30 GMT", 20.0),  # an HTTP date, 20 s after "now" below
        ("Thu, 01 Jan 1970 00:00:05 GMT", 0.0),  # a date already past: no wait
        ("soon", None),
        ("-3", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=10.0) == seconds
