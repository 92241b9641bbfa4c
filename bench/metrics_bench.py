"""Benchmark outrider's GET /metrics and /health against the AIBrix runtime, on one shared engine stand-in.

Usage: python bench/metrics_bench.py [--quick] [--aibrix-python PATH] [--outrider-cmd CMD] [--json FILE]

One run measures, for outrider and for the AIBrix runtime (`aibrix_runtime`), both scraping the same local
engine stand-in (bench/fake_engine.py) that serves a real vLLM page:
  1. requests/s and p50/p99 latency of the metrics route at concurrency 1, 10 and 50 (closed loop: N
     keep-alive connections, each sends its next request when the previous answer is complete);
  2. CPU seconds per 1,000 metrics requests, from utime+stime of each server's process tree in /proc;
  3. p50/p99 of the liveness route (outrider /health, AIBrix /healthz), probed every 20 ms on a new connection
     each time (as the kubelet does): idle, while the metrics route is under load at concurrency 10, and under
     that load with the engine answering every request 1 s late.
Both servers run side by side for the whole run; their measurements are interleaved per level and the order
alternates, so drift on the machine hits both alike.

Load generator: wrk (Debian package `wrk`), one thread. It is C on epoll with its own microsecond latency
histogram and needs a few percent of a core at the rates seen here, so on a 2-core machine it leaves the
servers their CPU; a Python generator would need about as much CPU per request as the faster server under
test, and its latencies would include its own event-loop delays. Each row prints the client's CPU share.
The liveness probe is paced (~50/s, one request at a time), so it runs in this process; a probe still waiting
when its window closes is waited for (up to 30 s) and counted, so a stalled server shows its whole stall.
By default each server is pinned to CPU 0 and the bench, wrk and the engine stand-in to CPU 1 (both servers
are single-threaded Python; pinning keeps the client off the server's core); --no-pin turns this off.

Each measurement: a warm-up wrk run, a wait (polling, with a deadline) until the server has worked off what
the warm-up left queued, then a fixed-duration wrk run; wrk stops by itself and every subprocess also has a
deadline. Everything listens and connects on 127.0.0.1. Servers run in their own process groups and are
stopped with SIGTERM (SIGKILL after a grace period).

Input: tests/fixtures/engine-metrics/vllm-0.32.0-cpu.prom (a real vLLM page, kept in the repository).
Environment: OUTRIDER_BENCH_AIBRIX_PYTHON (the python of a venv with aibrix; see bench/install_aibrix.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_NAME = "engine-metrics/vllm-0.32.0-cpu.prom"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU = 0  # with pinning: the server under test runs here...
CLIENT_CPU = 1  # ...and the bench, wrk and the engine stand-in here
PROBE_INTERVAL_S = 0.02  # the liveness probe starts one request every 20 ms (later if the last one was slow)
PROBE_TIMEOUT_S = 30.0
WRK_TIMEOUT_S = 30  # answers slower than this would count as wrk timeouts, not as latencies
DRAIN_FAST_S = 0.05  # a server has worked off queued requests once its liveness route answers this fast...
DRAIN_STREAK = 2  # ...this many times in a row
DRAIN_DEADLINE_S = 60.0
START_DEADLINE_S = 60.0
STOP_GRACE_S = 10.0
ENGINE_MARKER = b"vllm:num_requests_running"  # proof that a served page carries the engine's families
HEALTH_GOAL_MS = 10.0
# A measurement is flagged as contended (*) when other work kept the server off its CPU for more than
# SERVER_WAIT_WARN of the time, or used more than OTHER_LOAD_WARN cores (which can slow wrk and the probe).
SERVER_WAIT_WARN = 0.10
OTHER_LOAD_WARN = 0.5
THROUGHPUT_GOAL_X = 20.0

# wrk script: one machine-readable line at the end of the run.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class BenchError(Exception):
    """A failure that ends the run with a one-line message (and where the server logs are)."""


# -- small helpers: ports, HTTP, polling, /proc ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def http_get(port: int, path: str, timeout: float = 5.0) -> Answer:
    """One GET on a new loopback connection (for readiness and checks, not for load)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body, elapsed)
    finally:
        conn.close()


def poll_until(
    what: str,
    check: Callable[[], bool],
    deadline_s: float,
    alive: Callable[[], None] | None = None,
    interval_s: float = 0.05,
) -> float:
    """Call `check` until it holds; BenchError after `deadline_s`. Returns the seconds it took."""
    started = time.monotonic()
    while True:
        if alive is not None:
            alive()
        try:
            if check():
                return time.monotonic() - started
        except (OSError, http.client.HTTPException):
            pass  # not listening yet, or the connection was cut: poll again
        if time.monotonic() - started > deadline_s:
            raise BenchError(f"timed out after {deadline_s:g}s waiting for {what}")
        time.sleep(interval_s)


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime in clock ticks) for every process in /proc."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3 (state)
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


def _runqueue_wait_ns(pid: int) -> int:
    """Nanoseconds the threads of `pid` spent runnable but without a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[1])
    return total


def tree_cpu(root: int) -> tuple[float, float]:
    """(utime+stime, run-queue wait) of `root` and all its descendants, threads included, in seconds."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, wait_ns, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            ticks += stats[pid][1]
            wait_ns += _runqueue_wait_ns(pid)
            todo.extend(children.get(pid, []))
    return ticks / CLK_TCK, wait_ns / 1e9


def machine_ticks() -> tuple[int, int, int]:
    """(busy in tasks, busy in interrupts, total) jiffies over all CPUs, from /proc/stat.

    Interrupt time (irq, softirq) is mostly the kernel's loopback networking; no process is charged for it.
    """
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fh.readline().split()[1:9])
    return (
        user + nice + system + steal,
        irq + softirq,
        user + nice + system + idle + iowait + irq + softirq + steal,
    )


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children: between two readings, the wrk runs that ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cores(seconds: float) -> float:
    """Cores the whole machine kept busy over the next `seconds` (call it while the bench is idle)."""
    busy0, irq0, total0 = machine_ticks()
    time.sleep(seconds)  # a measurement window, not synchronization
    busy1, irq1, total1 = machine_ticks()
    return (busy1 + irq1 - busy0 - irq0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def contended(row: Mapping[str, Any]) -> bool:
    return bool(row["server_wait_util"] > SERVER_WAIT_WARN or row["other_cores"] > OTHER_LOAD_WARN)


def _flag(row: Mapping[str, Any]) -> str:
    return "*" if contended(row) else " "


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# -- processes ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """A server process in its own process group, its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    cpu: int | None  # pin to this CPU, or None
    metrics_path: str = "/metrics"
    health_path: str = "/health"
    proc: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cpu = self.cpu

        def pin() -> None:  # runs in the child before exec (the bench has no threads)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin,
        )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.name} was not started")
        return self.proc.pid

    def alive(self) -> None:
        """BenchError (with the end of its log) if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    | {line}" for line in text[-lines:])

    def cpu_and_wait(self) -> tuple[float, float]:
        """(CPU seconds, run-queue wait seconds) of its process tree so far."""
        return tree_cpu(self.pid)

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL it after STOP_GRACE_S; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    print(f"  {self.name} ignored SIGTERM for {STOP_GRACE_S:g}s; killing it", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):  # anything it left behind in its group
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The bench's environment minus settings that would change how a server runs, plus `extra`."""
    drop = ("OUTRIDER_", "INFERENCE_ENGINE", "METRIC_", "METRICS_", "PROMETHEUS_MULTIPROC_DIR", "POD_NAME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in reversed(servers):
            code = server.stop()
            if code not in (None, 0, -signal.SIGTERM):
                print(f"  note: {server.name} exited with code {code} after SIGTERM", file=sys.stderr)


# -- load: wrk ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def bytes_per_response(self) -> int:
        return round(self.bytes / self.requests) if self.requests else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "bytes_per_response": self.bytes_per_response,
            "errors": self.errors,
        }


class Wrk:
    def __init__(self, exe: str, script: Path) -> None:
        self.exe = exe
        self.script = script

    def start(self, port: int, path: str, connections: int, seconds: int) -> subprocess.Popen[str]:
        argv = [
            self.exe, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT_S}s",
            "-s", str(self.script), f"http://{HOST}:{port}{path}",
        ]  # fmt: skip
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def finish(proc: subprocess.Popen[str], seconds: int) -> WrkResult:
        try:
            out, err = proc.communicate(timeout=seconds + WRK_TIMEOUT_S + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"wrk overran its deadline: {proc.args!r}") from None
        line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (exit {proc.returncode}): {err.strip() or out.strip()}")
        raw = json.loads(line.removeprefix("WRKJSON "))
        return WrkResult(
            requests=raw["requests"],
            duration_s=raw["duration_us"] / 1e6,
            bytes=raw["bytes"],
            errors={k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
            p50_ms=raw["p50_us"] / 1e3,
            p90_ms=raw["p90_us"] / 1e3,
            p99_ms=raw["p99_us"] / 1e3,
            max_ms=raw["max_us"] / 1e3,
        )

    def run(self, port: int, path: str, connections: int, seconds: int) -> WrkResult:
        return self.finish(self.start(port, path, connections, seconds), seconds)


def wrk_version(exe: str) -> str:
    proc = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (proc.stdout or proc.stderr).splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "unknown"


# -- the liveness probe ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    latencies_ms: list[float]  # ascending; answers with a status other than 200 are in `errors` only
    errors: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "samples": len(lat),
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(lat[-1], 3) if lat else 0.0,
            "errors": self.errors,
        }


def _probe_once(port: int, request: bytes) -> int:
    """One request on a new connection, read to the end of the body; returns the status."""
    with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT_S) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the end of the headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.strip().lower() == "content-length"),
            None,
        )
        while length is None or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break  # no Content-Length: the body ends with the connection
            body += chunk
        return int(lines[0].split(" ", 2)[1])


def probe(port: int, path: str, seconds: float) -> ProbeResult:
    """GET `path` on a new connection every PROBE_INTERVAL_S for `seconds`, one at a time (like the kubelet).

    A request is sent only while the window is open, and the last one is always waited for (up to
    PROBE_TIMEOUT_S), so a server that stalls for longer than the window still yields its stall.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.monotonic()
    next_at = started
    while (now := time.monotonic()) - started < seconds:
        if next_at > now:
            time.sleep(next_at - now)  # pacing, not synchronization
        next_at = max(next_at + PROBE_INTERVAL_S, time.monotonic())
        t0 = time.perf_counter()
        try:
            status = _probe_once(port, request)
        except TimeoutError:
            errors["timeout"] += 1
            continue
        except (OSError, ValueError, IndexError) as exc:
            errors[type(exc).__name__] += 1
            continue
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if status == 200:
            latencies.append(elapsed_ms)
        else:
            errors[f"status_{status}"] += 1
    return ProbeResult(sorted(latencies), dict(errors))


# -- the bench ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Usage:
    """CPU counters at one moment: who used the machine between two of these."""

    at: float  # time.monotonic()
    server: float  # CPU seconds of the server's process tree
    server_wait: float  # seconds its threads were runnable but had no CPU (the machine was contended)
    engine: float  # ... of the engine stand-in
    client: float  # ... of this process's finished children (the wrk runs)
    bench: float  # ... of this process (the liveness probe, polling)
    busy: int  # busy jiffies of the whole machine, in tasks
    irq: int  # ... in interrupts
    total: int
    scrapes: int  # engine /metrics requests so far

    def until(self, end: Usage) -> dict[str, Any]:
        wall = max(end.at - self.at, 1e-9)
        server, engine = end.server - self.server, end.engine - self.engine
        client, bench = end.client - self.client, end.bench - self.bench
        cores = (os.cpu_count() or 1) / max(end.total - self.total, 1)
        busy_cores, irq_cores = (end.busy - self.busy) * cores, (end.irq - self.irq) * cores
        return {
            "server_cpu_s": round(server, 3),
            "server_cpu_util": round(server / wall, 3),
            "server_wait_util": round((end.server_wait - self.server_wait) / wall, 3),
            "client_cpu_util": round(client / wall, 3),
            "engine_cpu_util": round(engine / wall, 3),
            "irq_cores": round(irq_cores, 3),
            # busy cores that none of the processes measured here used: other work on the machine
            "other_cores": round(max(busy_cores - (server + engine + client + bench) / wall, 0.0), 3),
            "engine_scrapes": end.scrapes - self.scrapes,
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    warmup_s: int
    duration_s: int
    concurrencies: tuple[int, ...]
    health_concurrency: int
    slow_delay_s: float
    pin: bool


@dataclasses.dataclass
class Bench:
    plan: Plan
    wrk: Wrk
    engine: Server
    servers: list[Server]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def engine_scrapes(self) -> int:
        stats = json.loads(http_get(self.engine.port, "/_bench/stats").body)
        return int(stats["requests"].get("/metrics", 0))

    def set_engine_delay(self, seconds: float) -> None:
        answer = http_get(self.engine.port, f"/_bench/delay?seconds={seconds}")
        if answer.status != 200:
            raise BenchError(f"the engine stand-in refused delay {seconds}: {answer.body!r}")

    def drain(self, server: Server) -> float:
        """Wait until the requests a finished wrk run left queued are worked off (fast liveness answers)."""
        streak = 0

        def fast() -> bool:
            nonlocal streak
            answer = http_get(server.port, server.health_path, timeout=DRAIN_DEADLINE_S)
            streak = streak + 1 if answer.status == 200 and answer.seconds < DRAIN_FAST_S else 0
            return streak >= DRAIN_STREAK

        return poll_until(f"{server.name} to work off queued requests", fast, DRAIN_DEADLINE_S, server.alive)

    def usage(self, server: Server) -> Usage:
        own = resource.getrusage(resource.RUSAGE_SELF)
        busy, irq, total = machine_ticks()
        server_cpu, server_wait = server.cpu_and_wait()
        return Usage(
            at=time.monotonic(),
            server=server_cpu,
            server_wait=server_wait,
            engine=self.engine.cpu_and_wait()[0],
            client=children_cpu_seconds(),
            bench=own.ru_utime + own.ru_stime,
            busy=busy,
            irq=irq,
            total=total,
            scrapes=self.engine_scrapes(),
        )

    def throughput(self, server: Server, concurrency: int) -> dict[str, Any]:
        plan = self.plan
        self.wrk.run(server.port, server.metrics_path, concurrency, plan.warmup_s)
        drained = self.drain(server)
        before = self.usage(server)
        result = self.wrk.run(server.port, server.metrics_path, concurrency, plan.duration_s)
        spent = before.until(self.usage(server))
        server.alive()
        cpu = spent["server_cpu_s"]
        row = {
            "server": server.name,
            "concurrency": concurrency,
            **result.to_json(),
            "cpu_s_per_1k": round(cpu / result.requests * 1000, 4) if result.requests else None,
            **spent,
            "drain_s": round(drained, 2),
        }
        self.rows.append(row)
        return row

    def liveness(self, server: Server, condition: str, load: int | None, delay: float) -> dict[str, Any]:
        """Probe the liveness route for duration_s, optionally while wrk loads the metrics route."""
        plan = self.plan
        load_seconds = plan.warmup_s + plan.duration_s + 1  # outlasts the probe window
        under: WrkResult | None = None
        before = self.usage(server)
        loader = None
        if load is not None:
            loader = self.wrk.start(server.port, server.metrics_path, load, load_seconds)
        try:
            if loader is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # the load alone, for the warm-up
                    loader.wait(timeout=plan.warmup_s)
                    raise BenchError(f"the load on {server.name} ended during the warm-up")
            probed = probe(server.port, server.health_path, plan.duration_s)
        finally:
            if loader is not None:
                under = self.wrk.finish(loader, load_seconds)
        spent = before.until(self.usage(server))
        drained = self.drain(server)
        server.alive()
        row = {
            "server": server.name,
            "route": server.health_path,
            "condition": condition,
            "engine_delay_s": delay,
            **probed.to_json(),
            "metrics_load": None if under is None else {"concurrency": load, **under.to_json()},
            **spent,
            "drain_s": round(drained, 2),
        }
        self.health.append(row)
        return row

    def run(self) -> None:
        plan = self.plan
        for i, concurrency in enumerate(plan.concurrencies):
            for server in self.servers if i % 2 == 0 else self.servers[::-1]:
                row = self.throughput(server, concurrency)
                print(
                    f"  /metrics  c={concurrency:<3} {server.name:<9} {row['rps']:>9.1f} req/s"
                    f"  p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms",
                    flush=True,
                )
        c, slow = plan.health_concurrency, plan.slow_delay_s
        conditions: list[tuple[str, int | None, float]] = [
            ("idle", None, 0.0),
            (f"/metrics c={c}", c, 0.0),
            (f"/metrics c={c}, engine {slow:g} s slow", c, slow),
        ]
        for i, (condition, load, delay) in enumerate(conditions):
            self.set_engine_delay(delay)
            try:
                for server in self.servers if i % 2 == 0 else self.servers[::-1]:
                    row = self.liveness(server, condition, load, delay)
                    print(
                        f"  {server.health_path:<9} {condition:<30} {server.name:<9}"
                        f" p50 {row['p50_ms']:8.2f} ms"
                        f"  p99 {row['p99_ms']:8.2f} ms  (n={row['samples']})",
                        flush=True,
                    )
            finally:
                self.set_engine_delay(0.0)


# -- start-up checks ---------------------------------------------------------------------------------------


def check_metrics_page(server: Server, marker: bytes) -> dict[str, Any]:
    """Find the route that serves the page (following one redirect); check that it has the engine's names."""
    path = server.metrics_path
    answer = http_get(server.port, path)
    redirected_from = None
    if answer.status in (301, 302, 307, 308) and "location" in answer.headers:
        redirected_from, path = path, urlsplit(answer.headers["location"]).path or "/"
        answer = http_get(server.port, path)
    if answer.status != 200:
        raise BenchError(
            f"{server.name}: GET {path} answered {answer.status}: {answer.body[:300]!r}\n{server.log_tail()}"
        )
    for needle in (ENGINE_MARKER, marker):
        if needle not in answer.body:
            raise BenchError(f"{server.name}: GET {path} has no {needle.decode()!r} ({len(answer.body)} bytes)")
    server.metrics_path = path
    return {"path": path, "redirected_from": redirected_from, "bytes": len(answer.body)}


def resolve_outrider_cmd(arg: str | None) -> list[str]:
    if arg:
        return shlex.split(arg)
    exe = Path(sys.executable).parent / "outrider"
    if not exe.exists():
        raise BenchError(f"no outrider executable next to {sys.executable}; give --outrider-cmd")
    return [str(exe)]


def resolve_aibrix_cmd(python: str | None) -> tuple[list[str], str]:
    """The command that starts aibrix_runtime from the venv of `python`, and the installed aibrix version."""
    hint = "create a venv with: bench/install_aibrix.sh DIR, then pass DIR/bin/python"
    if not python:
        raise BenchError(f"give --aibrix-python PATH or OUTRIDER_BENCH_AIBRIX_PYTHON ({hint})")
    if not Path(python).exists():
        raise BenchError(f"--aibrix-python {python}: no such file ({hint})")
    check = subprocess.run(
        [python, "-c", "import importlib.metadata as m, aibrix.app; print(m.version('aibrix'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check.returncode != 0:
        raise BenchError(f"{python} cannot import aibrix.app ({hint}): {check.stderr.strip()[-500:]}")
    script = Path(python).parent / "aibrix_runtime"  # the venv's console script (symlinks not resolved)
    argv = [str(script)] if script.exists() else [python, "-c", "import aibrix.app as a; a.main()"]
    return argv, check.stdout.strip()


def command_version(argv: Sequence[str]) -> str:
    proc = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60, check=False)
    return (proc.stdout or proc.stderr).strip() or "unknown"


def fixtures_dir() -> Path:
    """The engine pages the tests use, kept in the repository."""
    return REPO_ROOT / "tests" / "fixtures" / "engine-metrics"


# -- report ------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def summarize(bench: Bench, ours: str, theirs: str) -> dict[str, Any]:
    by = {(r["server"], r["concurrency"]): r for r in bench.rows}
    levels = []
    for c in bench.plan.concurrencies:
        a, b = by[(ours, c)], by[(theirs, c)]
        levels.append(
            {
                "concurrency": c,
                "throughput": _ratio(a["rps"], b["rps"]),
                "p50_latency": _ratio(a["p50_ms"], b["p50_ms"]),
                "p99_latency": _ratio(a["p99_ms"], b["p99_ms"]),
                "cpu_per_request": _ratio(a["cpu_s_per_1k"], b["cpu_s_per_1k"]),
            }
        )
    cpu_per_1k: dict[str, float | None] = {}
    worst: dict[str, float | None] = {}
    for name in (ours, theirs):
        rows = [r for r in bench.rows if r["server"] == name]
        reqs = sum(r["requests"] for r in rows)
        cpu_per_1k[name] = round(sum(r["server_cpu_s"] for r in rows) / reqs * 1000, 4) if reqs else None
        worst[name] = max((float(h["p99_ms"]) for h in bench.health if h["server"] == name), default=None)
    goal_c = bench.plan.health_concurrency
    tput = next((lv["throughput"] for lv in levels if lv["concurrency"] == goal_c), None)
    our_worst = worst[ours]
    our_probe_errors = sum(sum(h["errors"].values()) for h in bench.health if h["server"] == ours)
    return {
        "ratios_outrider_over_aibrix": levels,
        "cpu_s_per_1k_all_levels": cpu_per_1k,
        "cpu_per_request_ratio_all_levels": _ratio(cpu_per_1k[ours], cpu_per_1k[theirs]),
        "health_p99_ms_worst": worst,
        "goals": {
            f"throughput_ratio_at_c{goal_c}": {
                "target": f">= {THROUGHPUT_GOAL_X:g}",
                "measured": tput,
                "met": tput is not None and tput >= THROUGHPUT_GOAL_X,
            },
            "outrider_health_p99_ms_worst": {
                "target": f"< {HEALTH_GOAL_MS:g}",
                "measured": our_worst,
                "met": our_worst is not None and our_worst < HEALTH_GOAL_MS and not our_probe_errors,
            },
        },
    }


def observations(bench: Bench, names: Sequence[str], pages: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain statements read off the numbers: what bounded each server."""
    notes = []
    for name in names:
        rows = [r for r in bench.rows if r["server"] == name]
        top = max(rows, key=lambda r: r["concurrency"])
        util, wait = top["server_cpu_util"], top["server_wait_util"]
        if util + wait < 0.85:
            bound = "not CPU-bound: it waited on something else"
        elif wait > 0.1:
            bound = f"CPU-bound, and kept off its CPU {wait * 100:.0f}% of the time by other work"
        else:
            bound = "CPU-bound on its one core"
        notes.append(
            f"{name}: at c={top['concurrency']} its process used {util * 100:.0f}% of a core "
            f"({_fmt(top['cpu_s_per_1k'], '.2f')} ms CPU per request) -> {bound}; wrk used "
            f"{top['client_cpu_util'] * 100:.0f}% of a core."
        )
        scrapes, reqs = sum(r["engine_scrapes"] for r in rows), sum(r["requests"] for r in rows)
        if reqs:
            notes.append(
                f"{name}: the engine was scraped {scrapes} times for {reqs} metrics requests "
                f"({scrapes / reqs:.3f} per request)."
            )
        page = pages[name]
        if page.get("redirected_from"):
            notes.append(
                f"{name}: GET {page['redirected_from']} answers 307 -> {page['path']}; the bench loads "
                f"{page['path']} (a scraper that follows the redirect pays a second round trip per scrape)."
            )
        loaded = [h for h in bench.health if h["server"] == name and h["metrics_load"]]
        fast = next((h for h in loaded if not h["engine_delay_s"]), None)
        slow = next((h for h in loaded if h["engine_delay_s"]), None)
        if fast and slow:
            ld = slow["metrics_load"]
            notes.append(
                f"{name}: with the engine {slow['engine_delay_s']:g} s slow, /metrics at "
                f"c={ld['concurrency']} completed {ld['requests']} requests in {ld['duration_s']:.0f} s "
                f"(p99 {ld['p99_ms']:.0f} ms, "
                f"{ld['bytes_per_response']} bytes each; {fast['metrics_load']['bytes_per_response']} with a "
                f"fast engine); work left queued took {slow['drain_s']:.1f} s to drain."
            )
    for h in bench.health:
        if h["errors"]:
            notes.append(f"{h['server']}, {h['condition']}: liveness probe errors {h['errors']}")
        if h["metrics_load"] and h["metrics_load"]["errors"]:
            notes.append(f"{h['server']}, {h['condition']}: metrics load errors {h['metrics_load']['errors']}")
    for r in bench.rows:
        if r["errors"]:
            notes.append(f"{r['server']}, c={r['concurrency']}: metrics errors {r['errors']}")
    flagged = [r for r in [*bench.rows, *bench.health] if contended(r)]
    if flagged:
        notes.append(
            f"{len(flagged)} of {len(bench.rows) + len(bench.health)} measurements (*) ran on a busy machine "
            f"(up to {max(r['other_cores'] for r in flagged):.2f} cores of other work, server kept off its "
            f"CPU up to {max(r['server_wait_util'] for r in flagged) * 100:.0f}% of the time): those numbers "
            "understate what the servers can do; rerun on a quiet machine."
        )
    return notes


def print_report(
    bench: Bench,
    names: tuple[str, str],
    summary: Mapping[str, Any],
    notes: Sequence[str],
    pages: Mapping[str, Mapping[str, Any]],
) -> None:
    plan = bench.plan
    ours, theirs = names
    pin = "server pinned to CPU 0, wrk+engine+bench to CPU 1" if plan.pin else "no CPU pinning"
    print(f"\nGET metrics route: wrk 1 thread, c keep-alive connections, {plan.duration_s} s after a "
          f"{plan.warmup_s} s warm-up ({pin})")  # fmt: skip
    print("  pages: " + "; ".join(f"{n} GET {pages[n]['path']} {pages[n]['bytes']} bytes" for n in names))
    head = (
        f"{'c':>3}  {'server':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'err':>4} "
        f"{'B/resp':>6} {'CPU s/1k':>8} {'srv':>4} {'wait':>4} {'wrk':>4} {'eng':>4} {'other':>5} "
        f"{'scrapes':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in bench.rows:
        print(
            f"{r['concurrency']:>3}  {r['server']:<9} {r['rps']:>8.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['max_ms']:>8.1f} {sum(r['errors'].values()):>4} {r['bytes_per_response']:>6} "
            f"{_fmt(r['cpu_s_per_1k'], '.3f'):>8} {r['server_cpu_util'] * 100:>3.0f}% "
            f"{r['server_wait_util'] * 100:>3.0f}% "
            f"{r['client_cpu_util'] * 100:>3.0f}% {r['engine_cpu_util'] * 100:>3.0f}% "
            f"{r['other_cores']:>5.2f}{_flag(r)}{r['engine_scrapes']:>7}"
        )
    print("  CPU s/1k: server CPU seconds per 1,000 requests (= ms per request); srv, wrk, eng: share of one")
    print("  core used by the server's process tree, wrk, the engine stand-in; wait: share of the time the")
    print("  server was runnable but had no CPU; other: busy cores used by other processes (interrupt time")
    print("  excluded); scrapes: engine /metrics requests;")
    print(
        f"  * = contended: server waited for its CPU over {SERVER_WAIT_WARN * 100:g}% of the time, or other "
        f"work used over {OTHER_LOAD_WARN:g} cores."
    )
    print(f"\nRatios {ours}/{theirs} (throughput above 1, latency and CPU below 1 favour {ours}):")
    print(f"{'c':>3}  {'throughput':>10} {'p50 lat':>8} {'p99 lat':>8} {'CPU/req':>8}")
    for lv in summary["ratios_outrider_over_aibrix"]:
        print(
            f"{lv['concurrency']:>3}  {_fmt(lv['throughput']):>9}x {_fmt(lv['p50_latency'], '.3f'):>8} "
            f"{_fmt(lv['p99_latency'], '.3f'):>8} {_fmt(lv['cpu_per_request'], '.3f'):>8}"
        )
    cpu = summary["cpu_s_per_1k_all_levels"]
    print(
        f"  CPU seconds per 1,000 requests, all levels: {ours} {_fmt(cpu[ours], '.3f')}, "
        f"{theirs} {_fmt(cpu[theirs], '.3f')} "
        f"(ratio {_fmt(summary['cpu_per_request_ratio_all_levels'], '.3f')})"
    )
    print(
        f"\nLiveness route: one GET on a new connection every {PROBE_INTERVAL_S * 1000:g} ms for "
        f"{plan.duration_s} s (the last one waited for); load = wrk on the metrics route"
    )
    head = (
        f"{'condition':<30} {'server':<9} {'route':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>4} "
        f"{'err':>3} {'load req/s':>10} {'load p99':>9} {'srv':>4} {'wait':>4} {'other':>5}"
    )
    print(head)
    print("-" * len(head))
    for h in bench.health:
        ld = h["metrics_load"]
        print(
            f"{h['condition']:<30} {h['server']:<9} {h['route']:<8} {h['p50_ms']:>8.2f} {h['p99_ms']:>8.2f} "
            f"{h['max_ms']:>8.1f} {h['samples']:>4} {sum(h['errors'].values()):>3} "
            f"{_fmt(ld['rps'] if ld else None, '.1f'):>10} {_fmt(ld['p99_ms'] if ld else None, '.1f'):>9} "
            f"{h['server_cpu_util'] * 100:>3.0f}% {h['server_wait_util'] * 100:>3.0f}% "
            f"{h['other_cores']:>5.2f}{_flag(h)}"
        )
    print("\nGoals:")
    for key, goal in summary["goals"].items():
        verdict = "met" if goal["met"] else "NOT met"
        print(f"  {key}: target {goal['target']}, measured {_fmt(goal['measured'])} -> {verdict}")
    print("\nObservations:")
    for note in notes:
        print(f"  - {note}")


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s measurements instead of 5 s")
    parser.add_argument(
        "--aibrix-python",
        default=os.environ.get("OUTRIDER_BENCH_AIBRIX_PYTHON"),
        help="python of a venv with aibrix [env: OUTRIDER_BENCH_AIBRIX_PYTHON]",
    )
    parser.add_argument(
        "--outrider-cmd", default=None, help="command that runs outrider (default: outrider next to python)"
    )
    parser.add_argument(
        "--outrider-profile",
        default="outrider,aibrix",
        help="outrider --metrics-profile (default outrider,aibrix: also the aibrix:* names AIBrix serves)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--slow-delay", type=float, default=1.0, help="slow engine's delay, s (default 1)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs (kept anyway on failure)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_exe = shutil.which("wrk")
    if wrk_exe is None:
        print("metrics_bench: wrk is not installed; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    try:
        setup = preflight(args, wrk_exe)
    except BenchError as exc:
        print(f"metrics_bench: error: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="outrider-bench-"))
    ok = False
    try:
        result = bench_main(args, setup, workdir)
        ok = True
    except BenchError as exc:
        print(f"metrics_bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"metrics_bench: server logs kept in {workdir}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


@dataclasses.dataclass(frozen=True)
class Setup:
    wrk: str
    page: Path
    outrider_cmd: list[str]
    aibrix_cmd: list[str]
    aibrix_version: str


def preflight(args: argparse.Namespace, wrk_exe: str) -> Setup:
    """Everything the run needs that exists before it starts (BenchError with a hint when it does not)."""
    page = fixtures_dir() / FIXTURE_NAME
    if not page.is_file():
        raise BenchError(f"fixture page {page} not found")
    outrider_cmd = resolve_outrider_cmd(args.outrider_cmd)
    aibrix_cmd, aibrix_version = resolve_aibrix_cmd(args.aibrix_python)
    return Setup(wrk_exe, page, outrider_cmd, aibrix_cmd, aibrix_version)


def bench_main(args: argparse.Namespace, setup: Setup, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    page, outrider_cmd, aibrix_cmd = setup.page, setup.outrider_cmd, setup.aibrix_cmd
    aibrix_version, wrk_exe = setup.aibrix_version, setup.wrk
    plan = Plan(
        warmup_s=1,
        duration_s=2 if args.quick else 5,
        concurrencies=(1, 10, 50),
        health_concurrency=10,
        slow_delay_s=args.slow_delay,
        pin=args.pin and len(os.sched_getaffinity(0)) >= 2,
    )
    if plan.pin:
        os.sched_setaffinity(0, {CLIENT_CPU})  # inherited by wrk and the engine stand-in
    server_cpu = SERVER_CPU if plan.pin else None
    script = workdir / "report.lua"
    script.write_text(WRK_LUA)
    wrk = Wrk(wrk_exe, script)

    engine_port = free_port()
    engine_url = f"http://{HOST}:{engine_port}"
    engine_argv = [sys.executable, str(Path(__file__).with_name("fake_engine.py"))]
    engine = Server(
        "engine",
        [*engine_argv, "--page", str(page), "--port", str(engine_port)],
        clean_env({}),
        engine_port,
        workdir / "engine.log",
        None,
    )
    port = free_port()
    outrider = Server(
        "outrider",
        [*outrider_cmd, "serve", "-E", "vllm", "-B", engine_url, "-H", HOST, "-P", str(port),
         "--metrics-profile", args.outrider_profile],
        clean_env({}),
        port,
        workdir / "outrider.log",
        server_cpu,
        health_path="/health",
    )  # fmt: skip
    prom_dir = workdir / "aibrix-prometheus"  # AIBrix empties this directory at start
    prom_dir.mkdir()
    port = free_port()
    aibrix_env = {
        "INFERENCE_ENGINE": "vllm",
        "INFERENCE_ENGINE_ENDPOINT": engine_url,
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    aibrix = Server(
        "aibrix",
        [*aibrix_cmd, "--host", HOST, "--port", str(port)],
        clean_env(aibrix_env),
        port,
        workdir / "aibrix.log",
        server_cpu,
        health_path="/healthz",
    )
    servers = [outrider, aibrix]
    environment: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "pinned": plan.pin,
        "wrk": wrk_version(wrk_exe),
        "outrider": command_version(outrider_cmd),
        "aibrix": aibrix_version,
        "outrider_cmd": outrider.argv,
        "aibrix_cmd": aibrix.argv,
        "fixture": str(page),
    }
    mode = "quick" if args.quick else "full"
    print(
        f"metrics bench ({mode}): {environment['outrider']} vs aibrix {aibrix_version}; "
        f"{environment['wrk']}; logs in {workdir}",
        flush=True,
    )
    quiet = busy_cores(1.0)
    environment["busy_cores_before_start"] = round(quiet, 3)
    if quiet > OTHER_LOAD_WARN / 2:
        print(
            f"  warning: the machine is busy before the bench starts ({quiet:.2f} cores over 1 s): other "
            "work will disturb the numbers (see the 'other' columns)",
            flush=True,
        )
    with running([engine]):
        poll_until(
            "the engine stand-in",
            lambda: http_get(engine_port, "/v1/models").status == 200,
            START_DEADLINE_S,
            engine.alive,
        )
        with running(servers):
            t_out = poll_until(
                "outrider GET /ready",
                lambda: http_get(outrider.port, "/ready").status == 200,
                START_DEADLINE_S,
                outrider.alive,
            )
            t_aib = poll_until(
                "aibrix GET /healthz",
                lambda: http_get(aibrix.port, "/healthz").status == 200,
                START_DEADLINE_S,
                aibrix.alive,
            )
            print(
                f"  both up: outrider ready after {t_out:.1f} s, aibrix after {t_out + t_aib:.1f} s",
                flush=True,
            )
            marker = b"aibrix:" if "aibrix" in args.outrider_profile else b"outrider"
            pages = {
                outrider.name: check_metrics_page(outrider, marker),
                aibrix.name: check_metrics_page(aibrix, b"aibrix:"),
            }
            bench = Bench(plan, wrk, engine, servers)
            bench.run()
            for server in servers:
                server.alive()

    names = (outrider.name, aibrix.name)
    summary = summarize(bench, *names)
    notes = observations(bench, names, pages)
    print_report(bench, names, summary, notes, pages)
    elapsed = time.monotonic() - started
    print(f"\n(bench took {elapsed:.0f} s)")
    return {
        "plan": dataclasses.asdict(plan),
        "environment": environment,
        "pages": pages,
        "metrics": bench.rows,
        "health": bench.health,
        "summary": summary,
        "observations": notes,
        "elapsed_s": round(elapsed, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


if __name__ == "__main__":
    sys.exit(main())
