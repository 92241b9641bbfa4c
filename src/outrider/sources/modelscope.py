"""ModelScope model repos (`ms://owner/name[@revision]`, Kthena's spelling), over ModelScope's HTTP API with httpx.

Listing is one call, `GET {endpoint}/api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=true`: every entry
with its path, type (`blob` or `tree`), size, sha256 and the commit it belongs to. That commit is recorded as
`revision`, and every read names it rather than the branch (`master` unless told), so a push during a download
cannot mix two versions of a file. Bytes come through ranged GETs on
`{endpoint}/api/v1/models/{repo}/repo?Revision={commit}&FilePath={path}`.

Token: the options' `ms_token` (the request's, or the pod's `MS_TOKEN` while the endpoint is the pod's own), sent as
`Authorization: Bearer`; none otherwise. The ModelScope SDK is not used: it writes whole files itself, and the
transfer engine owns the writing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx

from outrider.errors import InvalidRequest, SourceError, SourceNotFound, SourceTransientError
from outrider.sources._common import (
    CONNECT_TIMEOUT,
    POOL_HEADROOM,
    READ_TIMEOUT,
    check_range,
    check_relative_path,
    retried,
    scrub,
    secrets_of,
)
from outrider.sources.base import Checksum, RemoteFile, Source
from outrider.sources.http_reads import raise_for_status, ranged_get
from outrider.sources.options import DEFAULT_MS_ENDPOINT, DEFAULT_MS_REVISION, SourceOptions
from outrider.sources.uri import ModelScopeRef


class ModelScopeSource(Source):
    """A model repo on ModelScope (or a server speaking its API), at one resolved commit."""

    def __init__(self, ref: ModelScopeRef, options: SourceOptions, *, max_workers: int) -> None:
        self._repo = ref.repo
        self._requested = ref.revision or options.ms_revision or DEFAULT_MS_REVISION
        self._api = f"{(options.ms_endpoint or DEFAULT_MS_ENDPOINT).rstrip('/')}/api/v1/models/{ref.repo}"
        self._headers = {"Authorization": f"Bearer {options.ms_token}"} if options.ms_token else {}
        self._secrets = secrets_of(options)
        self._quiet = options.request_endpoint
        self.display = ModelScopeRef(ref.repo, self._requested).display
        pool = max(1, max_workers) + POOL_HEADROOM
        self._http = httpx.Client(
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends a listing's retry wait at close

    def _raise_status(self, response: httpx.Response, what: str) -> NoReturn:
        try:
            said = str(response.json().get("Message") or response.reason_phrase)
        except (ValueError, AttributeError):
            said = response.reason_phrase or "no message"
        if self._quiet:  # an endpoint the request named may be any service the pod reaches: not relayed
            said = "(the answer of an endpoint the request named is not shown)"
        message = f"{self.display}: {what}: {response.status_code}: {scrub(said, self._secrets)}"
        raise_for_status(
            response, message, denied=" (the repo is missing or private, and the token does not grant access)"
        )

    def _listing(self, what: str) -> httpx.Response:
        """One listing request; a transport failure or a status a retry may fix is a SourceTransientError."""
        try:
            response = self._http.get(
                f"{self._api}/repo/files",
                params={"Revision": self._requested, "Recursive": "true"},
                headers=self._headers,
            )
        except httpx.TransportError as exc:
            raise SourceTransientError(f"{self.display}: {what}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            self._raise_status(response, what)
        return response

    def list_files(self) -> list[RemoteFile]:
        what = "list"
        # Retried as chunk reads are (the SDK-less client has no retries of its own): one throttled listing must
        # not fail a whole download.
        response = retried(functools.partial(self._listing, what), self._closing)
        try:
            entries: Any = response.json()["Data"]["Files"]
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{self.display}: {what}: the hub's answer is not a file listing") from None
        files: list[RemoteFile] = []
        commits: set[str] = set()
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("Type") != "blob":
                continue  # directories are listed too
            path, size = entry.get("Path"), entry.get("Size")
            if not isinstance(path, str) or not isinstance(size, int) or size < 0:
                raise SourceError(f"{self.display}: {what}: an entry without a path or size")
            try:
                check_relative_path(path)
            except InvalidRequest:
                raise SourceError(f"{self.display}: repo file {path!r} has an unsafe path") from None
            sha = entry.get("Sha256")
            checksum = Checksum("sha256", sha) if isinstance(sha, str) and len(sha) == 64 else None
            if isinstance(entry.get("Revision"), str):
                commits.add(entry["Revision"])
            files.append(RemoteFile(path, size, checksum, sha if isinstance(sha, str) else None))
        if not files:
            raise SourceNotFound(f"{self.display}: the repo has no files at this revision")
        with self._lock:
            # One commit for the whole listing: read at that commit. Entries naming several (they name the commit
            # that last changed each file) leave the reads at the requested revision.
            self.revision = commits.pop() if len(commits) == 1 else self._requested
        return files

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        check_relative_path(path)
        if start == end:
            return
        with self._lock:
            revision = self.revision or self._requested
        yield from ranged_get(
            self._http,
            f"{self._api}/repo",
            headers=self._headers,
            params={"Revision": revision, "FilePath": path},
            start=start,
            end=end,
            display=self.display,
            path=path,
            on_error=self._raise_status,
        )

    def close(self) -> None:
        self._closing.set()
        self._http.close()
