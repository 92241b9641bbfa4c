"""The kinds of value an option can take: what an operator may write for each, and how it is read and checked.

Each type here is an `Annotated` pydantic type that parses the text an operator wrote (a flag or a variable) and
checks the result; a value of the field's own type, given by code, goes straight to the checks. settings.py builds
its fields from them; `size` and `parse_suffixes` also read the same units in request bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr

from outrider.lifecycle.config import LaunchCommand, parse_launch, parse_port_range
from outrider.metrics.concepts import PROFILES

ENGINES = ("vllm", "sglang")
# Kthena accepts this spelling for a vLLM that serves disaggregated prefill/decode; the APIs are vLLM's.
ENGINE_ALIASES = {"vllmdisaggregated": "vllm"}
METRICS_PROFILES = PROFILES  # the metrics package owns the name sets it can publish
# Downloads: 16 MiB chunks keep per-request overhead (a ranged GET, a manifest entry) under 1% on any store while a
# crash loses at most workers x 16 MiB; 8 workers saturate a 10 Gb/s link from S3-like stores in our measurements.
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_DOWNLOAD_WORKERS = 8
MAX_DOWNLOAD_WORKERS = 64
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(raw: str) -> int:
    """A byte count from 64KiB to 4GiB: `16777216`, `16MiB`, `16M`, `512k`."""
    match = _SIZE_RE.match(raw)
    if not match:
        raise ValueError(f"expected a size like 16MiB or 1048576, got {raw!r}")
    value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()]
    if not 64 * 1024 <= value <= 4 * 1024**3:
        raise ValueError(f"{raw!r} is out of range 64KiB-4GiB")
    return value


def parse_suffixes(raw: str) -> tuple[str, ...]:
    """AIBrix's DOWNLOADER_ALLOW_FILE_SUFFIX spelling: `json, safetensors` (a leading dot is optional)."""
    return tuple(dict.fromkeys(s.strip().lstrip(".").lower() for s in raw.split(",") if s.strip().lstrip(".")))


def _engine(raw: str) -> str:
    name = ENGINE_ALIASES.get(raw.strip().lower(), raw.strip().lower())
    if name not in ENGINES:
        raise ValueError(f"unknown engine {raw!r} (expected one of: {', '.join(ENGINES)})")
    return name


def _base_url(raw: str) -> str:
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"malformed URL {raw!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ValueError(f"expected http(s)://host[:port] with no query or fragment, got {raw!r}")
    return str(url).rstrip("/")


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not re.fullmatch(pattern, raw.strip()):
            raise ValueError(f"expected {what}, got {raw!r}")
        return raw.strip()

    return parse


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip().lower() not in choices:
            raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {raw!r}")
        return raw.strip().lower()

    return parse


def _profiles(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip().lower() for p in raw.split(",") if p.strip()))
    unknown = [n for n in names if n not in METRICS_PROFILES]
    if not names or unknown:
        found = f"unknown profile {unknown[0]!r}" if unknown else "empty"
        raise ValueError(f"{found} (expected a comma list of: {', '.join(METRICS_PROFILES)})")
    return names


def _redis_url(raw: str) -> SecretStr:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")  # not echoed: it may hold a password
    return SecretStr(raw)


_absolute_dir = _matching("/.*", "an absolute directory path")
_prefix_name = _matching("[a-zA-Z_][a-zA-Z0-9_]*", "a metric name prefix")


def _prefix(raw: str) -> str:
    prefix = _prefix_name(raw)
    # The engines' families are named `<engine>:...` (vllm:, sglang:): unified names there would declare the
    # engine's own families a second time, which Prometheus and the endpoint picker reject.
    if prefix in ENGINES:
        raise ValueError(f"{prefix!r} is the namespace of the engine's own metrics; choose another prefix")
    return prefix


def _text(parse: Callable[[str], Any]) -> BeforeValidator:
    """Parse what an operator wrote; a value of the field's own type (given by code) goes to the type's checks."""
    return BeforeValidator(lambda raw: parse(raw) if isinstance(raw, str) else raw)


Engine = Annotated[str, _text(_engine)]
BaseUrl = Annotated[str, _text(_base_url)]
UrlPath = Annotated[str, _text(_matching("/[^?# ]*", "an absolute URL path like /metrics"))]
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Profiles = Annotated[tuple[str, ...], _text(_profiles)]
Prefix = Annotated[str, _text(_prefix)]
LogLevel = Annotated[str, _text(_one_of("debug", "info", "warning", "error"))]
LogFormat = Annotated[str, _text(_one_of("json", "text"))]
Dir = Annotated[str, _text(_absolute_dir), AfterValidator(lambda p: p.rstrip("/") or "/")]
Size = Annotated[int, _text(size), Field(ge=64 * 1024, le=4 * 1024**3)]
ZMQ_ENDPOINT = r"tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}|ipc://.+"
Zmq = Annotated[str, _text(_matching(ZMQ_ENDPOINT, "a ZMQ endpoint"))]
RedisUrl = Annotated[SecretStr, _text(_redis_url)]
# Data-parallel ranks publishing KV events: far above any deployment's, low enough to bound threads and ports.
MAX_KV_RANKS = 256
KvRanks = Annotated[int, Field(ge=1, le=MAX_KV_RANKS)]


def rank_endpoint(endpoint: str, rank: int) -> str:
    """Where rank `rank` publishes when rank 0 publishes at `endpoint`: vLLM's rule (ZmqEventPublisher's
    offset_endpoint_port), the tcp port plus the rank; port 0 (the OS picks) stays. ipc endpoints have no rank
    beyond 0 (vLLM refuses them): ValueError, as for a port beyond 65535."""
    if rank == 0:
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"{endpoint!r} has no port to add rank {rank} to (vLLM publishes ranks > 0 on tcp only)")
    base, _, port = endpoint.rpartition(":")
    if int(port) == 0:
        return endpoint
    if int(port) + rank > 65535:
        raise ValueError(f"rank {rank} of {endpoint!r} would publish on port {int(port) + rank}, beyond 65535")
    return f"{base}:{int(port) + rank}"


Workers = Annotated[int, Field(ge=1, le=MAX_DOWNLOAD_WORKERS)]
BlockSize = Annotated[int, Field(ge=1, le=1_000_000)]
Suffixes = Annotated[tuple[str, ...], _text(parse_suffixes)]
Verify = Annotated[bool, _text(lambda raw: _one_of("checksum", "size")(raw) == "checksum")]
# Checked as text first: pydantic alone would refuse " true" and take "t" or "y".
Switch = Annotated[bool, _text(_one_of("1", "true", "yes", "on", "0", "false", "no", "off"))]
# The engine lifecycle's: the commands engines may be launched with (see lifecycle/config.py), a port range
# (`20000-20999`), and what happens to engines at exit.
Launch = Annotated[tuple[LaunchCommand, ...], _text(parse_launch)]
Ports = Annotated[tuple[int, int], _text(parse_port_range)]
OnExit = Annotated[Literal["stop", "keep"], _text(_one_of("stop", "keep"))]
DirPath = Annotated[Path, _text(lambda raw: Path(_absolute_dir(raw)))]


def option(default: Any, help: str, *spellings: str) -> Any:
    """A field an operator sets: its help, flags (`-E`, `--engine`) and the peer runtime's variables."""
    flags = [s for s in spellings if s.startswith("-")]
    own = [f"OUTRIDER_{flags[-1][2:].upper().replace('-', '_')}"] if flags else []
    env = [*own, *(s for s in spellings if not s.startswith("-"))]
    extra: Any = {"flags": flags, "env": env}  # for cli.py
    return Field(default, validation_alias=AliasChoices(*env), description=help, json_schema_extra=extra)
