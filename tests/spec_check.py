"""Check real answers against the live server's /openapi.json: the spec is the contract.

`SpecCheck.hook` is an httpx response hook: every answer a test's client gets from outrider, on a route and method
the spec describes, must have a documented status (exact, then `4XX`, then `default`), a documented content type,
and a JSON body valid against the documented schema. Requests to undescribed paths or methods are left alone: the
inventory (every route in the spec, nothing else) is tests/integration/test_openapi.py's business.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema


class SpecCheck:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked = 0
        self._paths = [(re.compile("^" + _template_regex(path) + "$"), path) for path in spec["paths"]]

    @classmethod
    async def load(cls, client: httpx.AsyncClient) -> SpecCheck:
        response = await client.get("/openapi.json")
        assert response.status_code == 200, response.text
        return cls(response.json())

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for regex, template in self._paths:
            if regex.match(path):
                found: dict[str, Any] | None = self.spec["paths"][template].get(method.lower())
                return found
        return None

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        """Raise AssertionError when this answer is not what the spec documents."""
        operation = self.operation(method, path)
        if operation is None:
            return
        responses = operation["responses"]
        documented = next(
            (responses[k] for k in (str(status), f"{status // 100}XX", "default") if k in responses), None
        )
        assert documented is not None, f"{method} {path}: status {status} is not documented ({sorted(responses)})"
        media = content_type.split(";")[0].strip().lower()
        content = documented.get("content", {})
        assert media in content, f"{method} {path} {status}: content type {media!r} is not documented ({list(content)})"
        if media == "application/json":
            schema = {**content[media]["schema"], "components": self.spec["components"]}
            try:
                jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)
            except jsonschema.ValidationError as exc:
                raise AssertionError(
                    f"{method} {path} {status}: answer does not match the spec: {exc.message}"
                ) from None
        self.checked += 1

    async def hook(self, response: httpx.Response) -> None:
        if response.request.method == "HEAD":
            return
        await response.aread()
        self.check(
            response.request.method,
            response.request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
        )


def _template_regex(template: str) -> str:
    # `{name}` is werkzeug's path converter (it may hold slashes); any other parameter is one segment.
    parts = re.split(r"(\{[^}]+\})", template)
    out = []
    for part in parts:
        if part == "{name}":
            out.append(".+")
        elif part.startswith("{"):
            out.append("[^/]+")
        else:
            out.append(re.escape(part))
    return "".join(out)
