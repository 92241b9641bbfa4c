"""A local Hugging Face Hub: the endpoints huggingface_hub and outrider's Hugging Face source call.

What it serves (as huggingface.co does, per huggingface_hub's own client code):
- `GET /api/models/{org}/{name}` and `/api/models/{org}/{name}/revision/{rev}` (`rev` quoted with safe=''):
  `{"id", "modelId", "sha", "private", "lastModified", "siblings"}`; with `?blobs=True` (what
  `HfApi.model_info(files_metadata=True)` sends) each sibling also has `size`, `blobId` and, for LFS files,
  `lfs: {"size", "sha256", "pointerSize"}`.
- `GET|HEAD /{org}/{name}/resolve/{rev}/{path}`: files stored in git are served directly (ETag = git blob id);
  LFS files answer 302 to a CDN URL on another origin (`localhost` instead of `127.0.0.1`, the same socket) with
  `X-Linked-Etag`, `X-Linked-Size`, `X-Repo-Commit`, as the Hub does. Both honour a single `Range`.
- Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) and `X-Error-Message`, which
  huggingface_hub turns into its typed errors. A private repo without a token answers 401 RepoNotFound, a bad
  token 401 "Invalid credentials in Authorization header", a missing repo 404 with a token and 401 without: the
  Hub's answers.

Known differences from the Hub: only model repos named `org/name` (no single-segment legacy ids, datasets or
spaces); one branch (`main`) plus the commit sha as revisions; no gated repos, Xet storage, tree/paths-info APIs,
pagination, rate limits or signed CDN URLs; the CDN needs no query signature. For tests it records every
Authorization header it receives (`seen_auth`) and can answer every request with a forced status (`fail_status`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from tests.servers._threaded import QuietHandler, ThreadedServer, parse_range

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclasses.dataclass
class HubRepo:
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()  # paths stored in LFS
    private: bool = False
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1(json.dumps(sorted((k, len(v)) for k, v in self.files.items())).encode())
            self.commit = digest.hexdigest()

    def pointer(self, path: str) -> bytes:
        data = self.files[path]
        oid = hashlib.sha256(data).hexdigest()
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()

    def sibling(self, path: str, blobs: bool) -> dict[str, object]:
        entry: dict[str, object] = {"rfilename": path}
        if not blobs:
            return entry
        data = self.files[path]
        entry["size"] = len(data)
        if path in self.lfs:
            pointer = self.pointer(path)
            entry["blobId"] = _git_blob_id(pointer)
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": len(pointer)}
        else:
            entry["blobId"] = _git_blob_id(data)
        return entry


class HubServer(ThreadedServer):
    def __init__(self, token: str) -> None:
        super().__init__(_HubHandler)
        self.token = token
        self.repos: dict[str, HubRepo] = {}
        self.fail_status: int | None = None
        self.fail_retry_after: str | None = None  # the Retry-After header sent with a forced failure
        self.seen_auth: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self.blobs: dict[str, bytes] = {}

    def add_repo(self, repo_id: str, repo: HubRepo) -> None:
        self.repos[repo_id] = repo
        for path in repo.lfs:
            data = repo.files[path]
            self.blobs[hashlib.sha256(data).hexdigest()] = data

    def record(self, path: str, auth: str | None) -> None:
        with self._lock:
            self.seen_auth.append((path, auth))


class _HubHandler(QuietHandler):
    @property
    def hub(self) -> HubServer:
        return self.server.app  # type: ignore[attr-defined, no-any-return]

    def _error(self, status: int, code: str | None, message: str, retry_after: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self.reply(status, json.dumps({"error": message}).encode(), headers)

    def _authorize(self, repo_id: str) -> HubRepo | None:
        """The repo if this request may see it; otherwise the Hub's error has been sent and None is returned."""
        auth = self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {self.hub.token}":
            self._error(401, None, INVALID_CREDENTIALS)
            return None
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and auth is None):
            # The Hub hides private repos: without a token, missing and private look the same (401).
            self._error(401 if auth is None else 404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.hub.record(url.path, self.headers.get("Authorization"))
        if self.hub.fail_status is not None:
            self._error(self.hub.fail_status, None, "forced failure", self.hub.fail_retry_after)
            return
        parts = url.path.split("/")
        if url.path.startswith("/api/models/"):
            self._model_info(parts[3:], parse_qs(url.query))
        elif url.path.startswith("/cdn/"):
            self._cdn(parts[2])
        elif len(parts) >= 6 and parts[3] == "resolve":
            self._resolve(f"{parts[1]}/{parts[2]}", unquote(parts[4]), unquote("/".join(parts[5:])))
        else:
            self._error(404, None, "Not Found")

    def _model_info(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if len(parts) == 2:
            revision = "main"
        elif len(parts) == 4 and parts[2] == "revision":
            revision = unquote(parts[3])
        else:
            self._error(404, None, "Not Found")
            return
        repo_id = f"{parts[0]}/{parts[1]}"
        repo = self._authorize(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        body = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": repo.private,
            "lastModified": "2024-06-11T00:00:00.000Z",
            "siblings": [repo.sibling(path, blobs) for path in sorted(repo.files)],
        }
        self.reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._authorize(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            return
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if path in repo.lfs:
            oid = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "ETag": f'"{_git_blob_id(repo.pointer(path))}"',
                    "X-Linked-Etag": f'"{oid}"',
                    "X-Linked-Size": str(len(data)),
                    # another origin, as the Hub's CDN is: a client must not carry the token there
                    "Location": f"http://localhost:{self.hub.port}/cdn/{oid}",
                }
            )
            self.reply(302, b"", headers)
            return
        headers["ETag"] = f'"{_git_blob_id(data)}"'
        self._send_bytes(data, headers)

    def _cdn(self, oid: str) -> None:
        data = self.hub.blobs.get(oid)
        if data is None:
            self._error(404, None, "NoSuchKey")
            return
        self._send_bytes(data, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

    def _send_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        headers["Content-Type"] = "application/octet-stream"
        try:
            span = parse_range(self.headers.get("Range"), len(data))
        except ValueError:
            self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        if span is None:
            self.reply(200, data, headers)
            return
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.reply(206, data[start : end + 1], headers)
