"""Hugging Face model repos (`org/name`, `hf://org/name@revision`): huggingface_hub for metadata, httpx for bytes.

Listing is one call, `HfApi.model_info(files_metadata=True)` (`GET /api/models/{repo}/revision/{rev}?blobs=True`):
the commit sha the revision resolves to, and every file with its size and, for LFS files, its sha256. The commit
is recorded as `revision`, and every read names the commit rather than the branch, so a push during a download
cannot mix two versions of a file.

Bytes come through ranged GETs on `{endpoint}/{repo}/resolve/{commit}/{path}` with `Range` and the hub's headers
(`Authorization: Bearer` when there is a token), following redirects to the LFS/Xet CDN. httpx drops
`Authorization` when a redirect leaves the origin, so the token never reaches the CDN. huggingface_hub's
`hf_hub_download` is not used: it writes whole files itself, and the transfer engine owns the writing.

Token: the one in the options; else, when the options allow ambient credentials, whatever huggingface_hub finds
on its own (its cached login); else none at all (`token=False`), so a request-named endpoint never gets one.

Checksums: sha256 for LFS files (the LFS oid). Small files stored in git carry only a git blob id, which is not a
content checksum, so they get none; `version` is the LFS oid or the blob id.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import NoReturn

import httpx
from huggingface_hub import HfApi, ModelInfo, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # public, documented; not in __all__

from outrider.errors import (
    InvalidRequest,
    SourceAccessDenied,
    SourceError,
    SourceNotFound,
    SourceThrottled,
    SourceTransientError,
)
from outrider.sources._common import (
    CONNECT_TIMEOUT,
    POOL_HEADROOM,
    READ_TIMEOUT,
    THROTTLE_STATUSES,
    TRANSIENT_STATUSES,
    check_range,
    check_relative_path,
    retried,
    retry_after_seconds,
    scrub,
    secrets_of,
)
from outrider.sources.base import Checksum, RemoteFile, Source
from outrider.sources.http_reads import raise_for_status, ranged_get
from outrider.sources.options import DEFAULT_HF_ENDPOINT, DEFAULT_HF_REVISION, SourceOptions
from outrider.sources.uri import HubRef

LIBRARY_NAME = "outrider"
# Class names of transport failures in httpx and in the httpx fork newer huggingface_hub releases use.
_TRANSPORT_ERROR_NAMES = frozenset({"TransportError", "TimeoutException", "NetworkError"})


def _is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError | TimeoutError) or any(
        cls.__name__ in _TRANSPORT_ERROR_NAMES for cls in type(exc).__mro__
    )


class HuggingFaceSource(Source):
    """A model repo on the Hugging Face Hub (or a Hub-compatible mirror), at one resolved commit."""

    def __init__(self, ref: HubRef, options: SourceOptions, *, max_workers: int) -> None:
        self._repo = ref.repo
        self._requested = ref.revision or options.hf_revision or DEFAULT_HF_REVISION
        self._endpoint = (options.hf_endpoint or DEFAULT_HF_ENDPOINT).rstrip("/")
        # str: that token; None: huggingface_hub's own lookup (trusted endpoints only); False: never a token.
        self._token: str | bool | None = options.hf_token or (None if options.ambient_credentials else False)
        self._secrets = secrets_of(options)
        # An endpoint the request named may be any service the pod reaches: its answers are not relayed.
        self._quiet = options.request_endpoint
        self.display = HubRef(ref.repo, self._requested).display
        self._api = HfApi(endpoint=self._endpoint, token=self._token, library_name=LIBRARY_NAME)
        pool = max(1, max_workers) + POOL_HEADROOM
        self._http = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # -- metadata ---------------------------------------------------------------------------------------------

    def _raise_hub(self, exc: Exception, what: str) -> NoReturn:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            server = exc.server_message or str(exc).strip().splitlines()[0]
            message = f"{self.display}: {what}: {status}: {self._said(server)}"
            if status in (401, 403):
                raise SourceAccessDenied(
                    message + " (the repo is missing, private or gated, and the token does not grant access)"
                ) from None
            if status == 404:
                raise SourceNotFound(message) from None
            if status in THROTTLE_STATUSES:
                wait = retry_after_seconds(exc.response.headers.get("Retry-After"))
                raise SourceThrottled(message, retry_after=wait) from None
            if status >= 500 or status in TRANSIENT_STATUSES:
                raise SourceTransientError(message) from None
            raise SourceError(message) from None
        if _is_transport_error(exc):
            raise SourceTransientError(f"{self.display}: {what}: {scrub(str(exc), self._secrets)}") from None
        raise SourceError(f"{self.display}: {what}: {type(exc).__name__}: {self._said(str(exc))}") from None

    def _model_info(self, what: str, *, files_metadata: bool = False) -> ModelInfo:
        """The hub's model info at the requested revision; failures as source errors about `what`."""
        try:
            return self._api.model_info(
                self._repo, revision=self._requested, files_metadata=files_metadata, token=self._token
            )
        except Exception as exc:
            self._raise_hub(exc, what)

    def _said(self, server: str) -> str:
        """What the hub said, for a message: credentials masked; nothing from an endpoint the request named."""
        return (
            "(the answer of an endpoint the request named is not shown)"
            if self._quiet
            else scrub(server, self._secrets)
        )

    def list_files(self) -> list[RemoteFile]:
        info = retried(functools.partial(self._model_info, "list", files_metadata=True), self._closing)
        if not info.sha:
            raise SourceError(f"{self.display}: the hub did not say which commit {self._requested!r} is")
        files: list[RemoteFile] = []
        for sibling in info.siblings or []:
            try:
                check_relative_path(sibling.rfilename)
            except InvalidRequest:
                raise SourceError(f"{self.display}: repo file {sibling.rfilename!r} has an unsafe path") from None
            if sibling.size is None:
                raise SourceError(f"{self.display}: the hub did not give the size of {sibling.rfilename!r}")
            lfs = sibling.lfs
            checksum = Checksum("sha256", lfs.sha256) if lfs is not None else None
            version = lfs.sha256 if lfs is not None else sibling.blob_id
            files.append(RemoteFile(sibling.rfilename, int(sibling.size), checksum, version))
        if not files:
            raise SourceNotFound(f"{self.display}: the repo has no files at this revision")
        with self._lock:
            self.revision = info.sha
        return files

    def _commit(self) -> str:
        """The commit reads name: resolved by list_files, or here if a read comes first."""
        with self._lock:
            if self.revision is not None:
                return self.revision
        info = retried(functools.partial(self._model_info, "resolve revision"), self._closing)
        if not info.sha:
            raise SourceError(f"{self.display}: the hub did not say which commit {self._requested!r} is")
        with self._lock:
            self.revision = self.revision or info.sha
            return self.revision

    # -- bytes ------------------------------------------------------------------------------------------------

    def _raise_status(self, response: httpx.Response, what: str) -> NoReturn:
        server = response.headers.get("X-Error-Message") or response.reason_phrase or "no message"
        raise_for_status(response, f"{self.display}: {what}: {response.status_code}: {self._said(server)}")

    def read_range(self, path: str, start: int, end: int) -> Iterator[bytes]:
        check_range(start, end)
        check_relative_path(path)
        if start == end:
            return
        url = hf_hub_url(self._repo, path, revision=self._commit(), endpoint=self._endpoint)
        headers = build_hf_headers(token=self._token, library_name=LIBRARY_NAME)
        yield from ranged_get(
            self._http,
            url,
            headers=headers,
            start=start,
            end=end,
            display=self.display,
            path=path,
            on_error=self._raise_status,
        )

    def close(self) -> None:
        self._closing.set()  # a metadata request's retry wait ends
        self._http.close()
