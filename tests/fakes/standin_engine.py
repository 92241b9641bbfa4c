"""A stand-in engine process for the engine lifecycle tests: launched by outrider like vLLM, answering as vLLM does.

Run as `python standin_engine.py --model DIR --served-model-name NAME --host H --port P [flags...]` (SGLang's
`--model-path` too). Standard library only: outrider launches it with the test venv's python through the
`--engine-launch` allowlist, exactly as it would launch `vllm serve`.

What it does is steered by `standin.json` in the model directory (so a test picks the behaviour by the artifact
it activates), all optional:
  {"health_after": 0.5}    answer /health only after this many seconds
  {"healthy_when": PATH}   answer /health only once PATH exists (the test says when)
  {"never_healthy": true}  never answer /health with 200
  {"exit_after": 0.2, "exit_code": 3}   exit by itself
  {"ignore_sigterm": true} ignore SIGTERM (a stop must end with SIGKILL)
  {"worker": true}         fork a worker into its process group (as vLLM forks its engine core)
  {"sleep_fails": true}    answer /sleep with vLLM's 500 shape

It prints one line `STANDIN {json}` at start: its argv, the names of the variables it was given, and the values of
KVCACHED_IPC_NAME and VLLM_SERVER_DEV_MODE (never the API key's value: only whether it is set).
Routes: GET /health, GET /v1/models, POST /standin/exit?code=N (exit now with that code), POST /v1/completions
(needs `Authorization: Bearer $VLLM_API_KEY` when set),
GET /metrics (vLLM's request families for the served name), and with VLLM_SERVER_DEV_MODE=1 vLLM's sleep routes:
POST /sleep?level=N, POST /wake_up, GET /is_sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def _args(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[argv[i]] = argv[i + 1]
                i += 2
                continue
            out[argv[i]] = ""
        i += 1
    return out


def main() -> None:
    args = _args(sys.argv[1:])
    model_dir = Path(args.get("--model") or args["--model-path"])
    name = args["--served-model-name"]
    behaviour: dict[str, Any] = {}
    steer = model_dir / "standin.json"
    if steer.exists():
        behaviour = json.loads(steer.read_text())
    started = time.monotonic()
    api_key = os.environ.get("VLLM_API_KEY")
    dev = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
    state = {"sleeping": False, "level": 0, "completions": 0}
    print(
        "STANDIN "
        + json.dumps(
            {
                "argv": sys.argv[1:],
                "env": sorted(os.environ),
                "ipc_name": os.environ.get("KVCACHED_IPC_NAME"),
                "dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE"),
                "api_key_set": api_key is not None,
                "files": sorted(p.name for p in model_dir.iterdir()),
            }
        ),
        flush=True,
    )

    if behaviour.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if behaviour.get("worker") and os.fork() == 0:
        # The worker: in the same process group, alive until signalled (SIGTERM's default action ends it).
        signal.signal(signal.SIGTERM, signal.SIG_IGN if behaviour.get("ignore_sigterm") else signal.SIG_DFL)
        while True:
            time.sleep(3600)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *values: Any) -> None:
            print("request: " + format % values, flush=True)

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                healthy = (
                    not behaviour.get("never_healthy")
                    and time.monotonic() - started >= float(behaviour.get("health_after", 0))
                    and ("healthy_when" not in behaviour or Path(behaviour["healthy_when"]).exists())
                )
                self._send(200 if healthy else 503, {} if healthy else {"error": "starting"})
            elif path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "root": str(model_dir)}]})
            elif path == "/metrics":
                label = f'{{engine="0",model_name="{name}"}}'
                page = (
                    f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{label} 0.0\n"
                    f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{label} 0.0\n"
                    f"# TYPE vllm:request_success counter\n"
                    f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{name}"}} '
                    f"{state['completions']}.0\n"
                )
                self._send(200, page.encode())
            elif path == "/is_sleeping" and dev:
                self._send(200, {"is_sleeping": state["sleeping"]})
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if parts.path == "/v1/completions":
                if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return
                if state["sleeping"]:
                    self._send(503, {"error": "sleeping"})
                    return
                request = json.loads(raw or b"{}")
                state["completions"] += 1
                self._send(
                    200, {"object": "text_completion", "model": request.get("model"), "choices": [{"text": "ok"}]}
                )
            elif parts.path == "/standin/exit":
                # The test's way to make the engine exit by itself, at a moment it chooses.
                code = int(parse_qs(parts.query).get("code", ["1"])[0])
                self._send(200, {"exiting": code})
                os._exit(code)
            elif parts.path == "/sleep" and dev:
                if behaviour.get("sleep_fails"):
                    self._send(500, {"error": {"message": "sleep failed", "type": "InternalServerError", "code": 500}})
                    return
                level = int(parse_qs(parts.query).get("level", ["1"])[0])
                state["sleeping"], state["level"] = True, level
                self._send(200, {"status": "sleeping", "level": level})
            elif parts.path == "/wake_up" and dev:
                state["sleeping"] = False
                self._send(200, {"status": "awake", "tags": None})
            else:
                self._send(404, {"detail": "Not Found"})

    server = ThreadingHTTPServer((args["--host"], int(args["--port"])), Handler)
    if "exit_after" in behaviour:

        def leave() -> None:
            time.sleep(float(behaviour["exit_after"]))
            print("standin: exiting by itself", flush=True)
            os._exit(int(behaviour.get("exit_code", 1)))

        threading.Thread(target=leave, daemon=True).start()
    print(f"standin: serving {name} on port {args['--port']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
