"""A local ModelScope hub: the two endpoints of its HTTP API that outrider's `ms://` source calls.

What it serves (as modelscope.cn does, per the ModelScope SDK's HubApi and public clients of the same API):
- `GET /api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=true`: `{"Code": 200, "Success": true,
  "Data": {"Files": [{"Name", "Path", "Type": "blob"|"tree", "Size", "Sha256", "Revision"}]}}`, directories as
  `tree` entries of size 0, `Revision` the commit id.
- `GET /api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}`: the file's bytes; a single `Range` is
  honoured (206 with `Content-Range`).
- Errors: `{"Code": <status>, "Success": false, "Message"}` with the HTTP status: 404 for a missing repo, revision
  or file, 401 for a private repo without the right token.

Known differences from the real hub: the token is checked as `Authorization: Bearer <token>` (the SDK logs in with
its token for a session cookie, `m_session_id`; the hub also takes the bearer header, which is what outrider
sends); one revision (`master`) plus the commit id; no datasets, pagination, rate limits or CDN redirects. For tests
it records the Authorization header of every request (`seen_auth`), and answers the next `listing_failures`
listings with a 503.
"""

from __future__ import annotations

import hashlib
import json
import threading
from urllib.parse import parse_qs, urlsplit

from tests.servers._threaded import QuietHandler, ThreadedServer, parse_range

COMMIT = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"


class ModelScopeServer(ThreadedServer):
    def __init__(self, token: str) -> None:
        super().__init__(_Handler)
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: set[str] = set()
        self.seen_auth: list[str | None] = []
        self.listing_failures = 0  # the next listings answered 503, as a throttled or restarting hub answers
        self._lock = threading.Lock()

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> None:
        self.repos[repo_id] = files
        if private:
            self.private.add(repo_id)


class _Handler(QuietHandler):
    @property
    def hub(self) -> ModelScopeServer:
        return self.server.app  # type: ignore[attr-defined, no-any-return]

    def _error(self, status: int, message: str) -> None:
        body = json.dumps({"Code": status, "Success": False, "Message": message}).encode()
        self.reply(status, body, {"Content-Type": "application/json"})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = self.headers.get("Authorization")
        with self.hub._lock:
            self.hub.seen_auth.append(auth)
        parts = url.path.strip("/").split("/")
        if len(parts) < 6 or parts[:3] != ["api", "v1", "models"] or parts[5] not in ("repo",):
            self._error(404, "no such API")
            return
        repo_id = f"{parts[3]}/{parts[4]}"
        files = self.hub.repos.get(repo_id)
        if repo_id in self.hub.private and auth != f"Bearer {self.hub.token}":
            self._error(401, "the model is private: log in")
            return
        if files is None:
            self._error(404, f"model {repo_id} not found")
            return
        if query.get("Revision", "master") not in ("master", COMMIT):
            self._error(404, f"revision {query.get('Revision')} not found")
            return
        if parts[5:] == ["repo", "files"]:
            with self.hub._lock:
                failing = self.hub.listing_failures > 0
                self.hub.listing_failures -= failing
            if failing:
                self._error(503, "service unavailable")
                return
            self._list(files)
        elif parts[5:] == ["repo"]:
            self._file(files, query.get("FilePath", ""))
        else:
            self._error(404, "no such API")

    def _list(self, files: dict[str, bytes]) -> None:
        entries: list[dict[str, object]] = []
        dirs = sorted({path.rsplit("/", 1)[0] for path in files if "/" in path})
        for d in dirs:
            entries.append({"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0, "Revision": COMMIT})
        for path, data in sorted(files.items()):
            entries.append(
                {
                    "Name": path.rsplit("/", 1)[-1],
                    "Path": path,
                    "Type": "blob",
                    "Size": len(data),
                    "Sha256": hashlib.sha256(data).hexdigest(),
                    "Revision": COMMIT,
                }
            )
        body = json.dumps({"Code": 200, "Success": True, "Data": {"Files": entries}}).encode()
        self.reply(200, body, {"Content-Type": "application/json"})

    def _file(self, files: dict[str, bytes], path: str) -> None:
        data = files.get(path)
        if data is None:
            self._error(404, f"file {path} not found")
            return
        try:
            wanted = parse_range(self.headers.get("Range"), len(data))
        except ValueError:
            self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        if wanted is None:
            self.reply(200, data, {"Content-Type": "application/octet-stream"})
            return
        start, end = wanted
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        self.reply(206, data[start : end + 1], headers)
