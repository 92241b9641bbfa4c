"""Run a real vLLM (CPU build) as a child process, for end-to-end tests and the demo.

Standard library + httpx only: this module is imported by tests running in the
project's venv, while vLLM itself runs from its own venv (see install_vllm.sh), whose
python is passed in. Nothing here imports torch.

    server = VllmProcess(vllm_python, model_dir)
    with server:                      # start(); stop() on exit
        server.wait_ready()
        httpx.get(f"{server.base_url}/v1/models")
        server.kill()                 # crash it...
        server.start(); server.wait_ready()   # ...and bring it back on the same port
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

HERE = Path(__file__).resolve().parent
TINY_MODEL_SCRIPT = HERE / "tiny_model.py"

# Environment the engine needs (engines.md section 1):
# - runtime LoRA routes (/v1/load_lora_adapter, ...) exist only with this flag;
# - 1 GiB (the smallest whole value) of KV cache is plenty for the tiny model;
# - no hub is reachable, so never try it.
# Threads need no setting: on CPU vLLM already pins one OpenMP thread per spare core and
# keeps one core for the API server (measured: OMP_NUM_THREADS=1 changed nothing).
VLLM_ENV = {
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# Runs first in the child, then becomes vLLM through exec (same pid, same process group).
# PR_SET_PDEATHSIG makes the kernel SIGTERM vLLM if the process that started it dies
# without stopping it (pytest killed by a CI timeout, say); vLLM's API server shuts its
# engine processes down on SIGTERM, so no 2.5 GB orphan is left behind. Done here rather
# than in a preexec_fn because preexec_fn is unsafe in a threaded parent.
_PDEATHSIG_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent died before vLLM started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option uvicorn sets, so TIME_WAIT leftovers of a killed server don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, max_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(lines[-max_lines:])


def _group_pids(pgid: int) -> list[int]:
    """Pids of the live processes in a process group (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 5 of /proc/PID/stat is the pgrp; split after the ")" ending comm,
            # which may itself contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _shm_files(pids: list[int]) -> set[Path]:
    """Files in /dev/shm that these processes have mapped.

    vLLM's multiprocessing shared memory and semaphores live there; after a SIGKILL
    nobody is left to unlink them, and a suite that crashes vLLM often would pile them up.
    """
    found: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            # address perms offset dev inode [path]; the path may hold spaces.
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            path = parts[5].strip()
            if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                found.add(Path(path))
    return found


class VllmError(RuntimeError):
    """vLLM failed to start, died, or did not become ready in time."""


class VllmProcess:
    """One vLLM OpenAI-compatible server on 127.0.0.1, restartable on the same port.

    The server runs in its own session (process group): vLLM forks an engine-core and a
    worker process, and signalling the group is the only way to reach all of them.

    With die_with_parent (the default) the server is sent SIGTERM when the *thread* that
    called start() exits, so call start() from a long-lived thread (the main thread, not
    asyncio.to_thread / an executor), or pass die_with_parent=False.
    """

    def __init__(
        self,
        python: str,
        model_dir: Path,
        served_name: str = "tiny",
        port: int | None = None,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.python = python
        self.model_dir = Path(model_dir)
        self.served_name = served_name
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path is not None else self._default_log_path()
        self.extra_env = dict(env or {})
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp_dir: Path | None = None

    @staticmethod
    def _default_log_path() -> Path:
        fd, name = tempfile.mkstemp(prefix="vllm-", suffix=".log")
        os.close(fd)
        return Path(name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        # The `vllm` console script fails in this install (it looks up package metadata
        # named `vllm`, but the distribution is `vllm-cpu`), so run the module directly.
        return [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            "256",
            "--dtype",
            "float32",
            "--enable-lora",
            "--max-lora-rank",
            "8",
            "--max-loras",
            "4",
            *self.extra_args,
        ]

    def environment(self, tmp_dir: Path) -> dict[str, str]:
        # A private TMPDIR: vLLM leaves a vllm_dist_* file there on every start, even
        # after a clean shutdown; this way stop()/kill() can remove it all.
        return {**os.environ, **VLLM_ENV, "TMPDIR": str(tmp_dir), **self.extra_env}

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> VllmProcess:
        """Spawn the server; returns at once (use wait_ready)."""
        if self.is_running():
            raise VllmError(f"vLLM already running (pid {self.pid})")
        # A restart right after a kill can race the old process's socket teardown.
        self._wait_port_free(timeout=15)
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="vllm-tmp-"))
        argv = self.command()
        if self.die_with_parent:
            argv = [self.python, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start: {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(self._tmp_dir),
                start_new_session=True,
            )
        return self

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _port_is_free(self.port):
            if time.monotonic() > deadline:
                raise VllmError(f"port {self.port} still in use after {timeout:.0f}s")
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 180) -> float:
        """Poll GET /health until 200; returns the seconds waited."""
        if self._proc is None:
            raise VllmError("vLLM was never started")
        started = time.monotonic()
        deadline = started + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise VllmError(
                        f"vLLM exited with code {code} before becoming ready; "
                        f"log {self.log_path} ends with:\n{_tail(self.log_path)}"
                    )
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise VllmError(
                        f"vLLM not ready after {timeout:.0f}s; log {self.log_path} ends with:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.5)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server process exits by itself; returns its exit code."""
        if self._proc is None:
            raise VllmError("vLLM was never started")
        return self._proc.wait(timeout=timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        # pgid == pid because of start_new_session=True; no such group = all gone already.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _wait_group_gone(self, timeout: float) -> bool:
        """Wait until no process of the group is left (children are not ours to wait on)."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self._proc.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False

    def _terminate(self, grace: float) -> int | None:
        """Signal the group (SIGTERM first if grace > 0), reap it, clean up after it."""
        if self._proc is None:
            return None
        # Listed before any signal: once the processes are gone, so are their maps.
        shm = _shm_files(_group_pids(self._proc.pid))
        if grace > 0 and self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace)
        # Also reaches engine/worker processes that outlive the API server.
        self._signal_group(signal.SIGKILL)
        code = self._proc.wait()
        self._wait_group_gone(timeout=5)
        for path in shm:
            path.unlink(missing_ok=True)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
        return code

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM the group, SIGKILL it after `grace` seconds; returns the exit code."""
        return self._terminate(grace)

    def kill(self) -> int | None:
        """SIGKILL the whole group at once, as a crash would; returns the exit code."""
        return self._terminate(grace=0)

    def restart(self, timeout: float = 180) -> float:
        """stop(), start() on the same port, wait_ready(); returns the seconds to ready."""
        self.stop()
        self.start()
        return self.wait_ready(timeout)

    def __enter__(self) -> VllmProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _run_builder(python: str, args: list[str]) -> Path:
    """Run tiny_model.py with the vLLM venv's python; it prints the output dir last."""
    result = subprocess.run(
        [python, str(TINY_MODEL_SCRIPT), *args],
        capture_output=True,
        text=True,
        # Keep torch from spreading over every core for a few-second job.
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"tiny_model.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def build_tiny_model(python: str, out_dir: Path) -> Path:
    """Build (or reuse) the tiny Llama model + tokenizer in out_dir."""
    return _run_builder(python, ["model", str(out_dir)])


def build_adapter(python: str, base_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Build (or reuse) a random rank-8 LoRA adapter for base_dir in out_dir."""
    return _run_builder(python, ["adapter", str(base_dir), str(out_dir), "--seed", str(seed)])


def _serve_forever(vllm_python: str, model_dir: Path) -> None:
    """By hand: python engine.py VLLM_PYTHON MODEL_DIR serves until Ctrl-C or SIGTERM."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(0)  # unwinds through the with-block, which stops vLLM

    signal.signal(signal.SIGTERM, on_sigterm)
    with VllmProcess(vllm_python, model_dir, log_path=Path("vllm.log")) as server:
        print(f"ready in {server.wait_ready():.1f}s at {server.base_url}; log: vllm.log", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()


if __name__ == "__main__":
    _serve_forever(sys.argv[1], Path(sys.argv[2]))
