"""Stand-in vLLM and SGLang servers for the runtime LoRA API: real HTTP on a loopback socket.

They answer the LoRA admin routes and `/v1/models` as the real engines do (engines.md §2):

vLLM (as seen live on 0.32.0):
- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: 200 with the plain-text body
  `Success: LoRA adapter 'a' added successfully.` (no content type, as FastAPI's bare `Response` sends it);
  a taken name: 400 JSON `{"error": {"message": "The lora adapter 'a' has already been loaded. ...",
  "type": "InvalidUserInput", "code": 400}}`; a path with no `adapter_config.json`: 404 JSON `NotFoundError`.
- `POST /v1/unload_lora_adapter {"lora_name"}`: 200 text, or 404 JSON `The lora adapter 'a' cannot be found.`
- With runtime LoRA updating disabled both routes are absent: FastAPI's 404 `{"detail": "Not Found"}`.
- Missing fields or a body that is not JSON: 400 JSON (vLLM maps request validation errors to 400).

SGLang (0.5.23 source): `POST /load_lora_adapter {"lora_name", "lora_path", "pinned"}` and
`POST /unload_lora_adapter {"lora_name"}`, always JSON `{"success", "error_message", "loaded_adapters"}`, 200 on
success and 400 on any failure (LoRA disabled included).

Differences from the real engines, on purpose: the `error_message` wording of SGLang failures is ours (outrider
must not depend on it, and does not); an adapter is "valid" when its directory holds `adapter_config.json`
(the real engines also read the weights); no completions are served. One request per connection
(`Connection: close`). `forget()` is what an engine restart does to runtime-loaded adapters; `stop()` closes the
listener (connections refused) and `start()` reopens it on the same port.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import trio

from tests.fakes.loopback import LoopbackServer

MAX_HEAD = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


@dataclasses.dataclass
class Call:
    route: str
    name: str | None
    path: str | None
    at: float  # trio clock
    status: int = 0


class FakeLoraEngine(LoopbackServer):
    def __init__(self, flavor: str = "vllm", model: str = "tiny", model_root: str = "/models/tiny") -> None:
        super().__init__()
        assert flavor in ("vllm", "sglang")
        self.flavor = flavor
        self.model = model
        self.model_root = model_root
        self.loaded: dict[str, str] = {}
        self.lora_updating = True
        # Set `hold` to keep every load waiting until the test sets it; `load_arrived` is set once one waits there.
        self.hold: trio.Event | None = None
        self.load_arrived = trio.Event()
        self.calls: list[Call] = []
        self.models_requests = 0
        self.seen_headers: list[dict[str, str]] = []

    # ----- steering from the test --------------------------------------------------------------------------------

    def forget(self) -> None:
        """What a restart does: every adapter loaded at run time is gone."""
        self.loaded.clear()

    def load_calls(self, name: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.route == "load" and (name is None or c.name == name)]

    def unload_calls(self, name: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.route == "unload" and (name is None or c.name == name)]

    # ----- HTTP --------------------------------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
            self.seen_headers.append(headers)
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = await stream.receive_some(length - len(body))
                if not chunk:
                    return
                body += chunk
            status, ctype, payload = await self._answer(method, path, body)
            content_type = f"Content-Type: {ctype}\r\n" if ctype else ""
            await stream.send_all(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n{content_type}"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _answer(self, method: str, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        if method == "GET" and path == "/health":
            return 200, None, b""
        if method == "GET" and path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", b"# no metrics in the LoRA fake\n"
        if method == "GET" and path == "/v1/models":
            self.models_requests += 1
            return _json(200, self._models())
        if self.flavor == "vllm":
            if method == "POST" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                if not self.lora_updating:
                    return _json(404, {"detail": "Not Found"})
                return await self._vllm(path.rsplit("/", 1)[1], body)
        elif method == "POST" and path in ("/load_lora_adapter", "/unload_lora_adapter"):
            return await self._sglang(path.lstrip("/"), body)
        return _json(404, {"detail": "Not Found"})

    def _models(self) -> dict[str, Any]:
        created = int(time.time())
        owner = self.flavor
        data = [
            {
                "id": self.model,
                "object": "model",
                "created": created,
                "owned_by": owner,
                "root": self.model_root,
                "parent": None,
                "max_model_len": 256,
            }
        ]
        for name, path in self.loaded.items():
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": owner,
                    "root": path,
                    "parent": self.model,
                    "max_model_len": None,
                }
            )
        return {"object": "list", "data": data}

    async def _vllm(self, route: str, raw: bytes) -> tuple[int, str | None, bytes]:
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return _json(400, _vllm_error("Invalid JSON body", "BadRequestError", 400))
        name = body.get("lora_name")
        call = Call(route.split("_", 1)[0], name, body.get("lora_path"), trio.current_time())
        self.calls.append(call)
        if route == "load_lora_adapter":
            path = body.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
                call.status = 400
                return _json(400, _vllm_error("Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError"))
            if name in self.loaded:
                call.status = 400
                message = (
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                    "set 'load_inplace' to True."
                )
                return _json(400, _vllm_error(message, "InvalidUserInput", 400))
            if self.hold is not None:
                self.load_arrived.set()
                await self.hold.wait()
            if not _has_adapter(path):
                call.status = 404
                message = f"Loading lora {name} failed: No adapter found for {path}"
                return _json(404, _vllm_error(message, "NotFoundError"))
            self.loaded[name] = path
            call.status = 200
            return 200, None, f"Success: LoRA adapter '{name}' added successfully.".encode()
        if not isinstance(name, str) or not name:
            call.status = 400
            message = "'lora_name' needs to be provided to unload a LoRA adapter."
            return _json(400, _vllm_error(message, "BadRequestError"))
        if name not in self.loaded:
            call.status = 404
            return _json(404, _vllm_error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404))
        del self.loaded[name]
        call.status = 200
        return 200, None, f"Success: LoRA adapter '{name}' removed successfully.".encode()

    async def _sglang(self, route: str, raw: bytes) -> tuple[int, str | None, bytes]:
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return _json(400, {"detail": "Invalid request body"})
        name = body.get("lora_name")
        call = Call(route.split("_", 1)[0], name, body.get("lora_path"), trio.current_time())
        self.calls.append(call)

        def answer(ok: bool, error: str | None) -> tuple[int, str | None, bytes]:
            call.status = 200 if ok else 400
            return _json(call.status, {"success": ok, "error_message": error, "loaded_adapters": dict(self.loaded)})

        if not self.lora_updating:
            return answer(False, "LoRA is not enabled. Please set `--enable-lora` to True.")
        if route == "load_lora_adapter":
            path = body.get("lora_path")
            if not isinstance(name, str) or not isinstance(path, str):
                return answer(False, "lora_name and lora_path are required")
            if name in self.loaded:
                return answer(False, f"LoRA adapter {name} is already loaded")
            if self.hold is not None:
                self.load_arrived.set()
                await self.hold.wait()
            if not _has_adapter(path):
                return answer(False, f"Failed to load LoRA adapter {name} from {path}: no adapter_config.json")
            self.loaded[name] = path
            return answer(True, None)
        if not isinstance(name, str) or name not in self.loaded:
            return answer(False, f"LoRA adapter {name} is not loaded")
        del self.loaded[name]
        return answer(True, None)


def _has_adapter(path: str) -> bool:
    # A stat on a local test directory: instant, so done on the event loop in this fake.
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _vllm_error(message: str, type_: str, code: int = 400) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
