"""The one Settings object: every option an operator can set, with its spellings, units and validation.

`Settings` (and the `DownloadSettings` in it) are frozen pydantic dataclasses, validated whenever one is built: by
cli.py from flags and the environment, or directly by tests (which also `dataclasses.replace` them). Each field's
`option` names its flags (the Kthena spellings) and the variables read for it, `OUTRIDER_<LONG FLAG>` and then the
peer runtime's. Secrets are `SecretStr`: never printed, and found by type by the log redactor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, AliasChoices, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic.dataclasses import dataclass

from outrider.metrics.concepts import PROFILES
from outrider.sources.options import SourceOptions

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


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


def size(raw: str) -> int:
    """A byte count from 64KiB to 4GiB: `16777216`, `16MiB`, `16M`, `512k`."""
    match = _SIZE_RE.match(raw)
    if not match:
        raise ValueError(f"expected a size like 16MiB or 1048576, got {raw!r}")
    value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()]
    if not 64 * 1024 <= value <= 4 * 1024**3:
        raise ValueError(f"{raw!r} is out of range 64KiB-4GiB")
    return value


def parse_size(raw: str, setting: str) -> int:
    try:
        return size(raw)
    except ValueError as exc:
        raise SettingsError(f"{setting}: {exc}") from None


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


def _text(parse: Callable[[str], Any]) -> BeforeValidator:
    """Parse what an operator wrote; a value of the field's own type (given by code) goes to the type's checks."""
    return BeforeValidator(lambda raw: parse(raw) if isinstance(raw, str) else raw)


Engine = Annotated[str, _text(_engine)]
BaseUrl = Annotated[str, _text(_base_url)]
UrlPath = Annotated[str, _text(_matching("/[^?# ]*", "an absolute URL path like /metrics"))]
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Profiles = Annotated[tuple[str, ...], _text(_profiles)]
Prefix = Annotated[str, _text(_matching("[a-zA-Z_][a-zA-Z0-9_]*", "a metric name prefix"))]
LogLevel = Annotated[str, _text(_one_of("debug", "info", "warning", "error"))]
LogFormat = Annotated[str, _text(_one_of("json", "text"))]
Dir = Annotated[
    str, _text(_matching("/.*", "an absolute directory path")), AfterValidator(lambda p: p.rstrip("/") or "/")
]
Size = Annotated[int, _text(size), Field(ge=64 * 1024, le=4 * 1024**3)]
Zmq = Annotated[
    str, _text(_matching(r"tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}|ipc://.+", "a ZMQ endpoint"))
]
RedisUrl = Annotated[SecretStr, _text(_redis_url)]
Workers = Annotated[int, Field(ge=1, le=MAX_DOWNLOAD_WORKERS)]
BlockSize = Annotated[int, Field(ge=1, le=1_000_000)]
Suffixes = Annotated[tuple[str, ...], _text(parse_suffixes)]
Verify = Annotated[bool, _text(lambda raw: _one_of("checksum", "size")(raw) == "checksum")]
# Checked as text first: pydantic alone would refuse " true" and take "t" or "y".
Switch = Annotated[bool, _text(_one_of("1", "true", "yes", "on", "0", "false", "no", "off"))]


def option(default: Any, help: str, *spellings: str) -> Any:
    """A field an operator sets: its help, flags (`-E`, `--engine`) and the peer runtime's variables."""
    flags = [s for s in spellings if s.startswith("-")]
    own = [f"OUTRIDER_{flags[-1][2:].upper().replace('-', '_')}"] if flags else []
    env = [*own, *(s for s in spellings if not s.startswith("-"))]
    extra: Any = {"flags": flags, "env": env}  # for cli.py
    return Field(default, validation_alias=AliasChoices(*env), description=help, json_schema_extra=extra)


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True))  # code names fields; cli.py reads the variables
class DownloadSettings:
    """Where downloads may land and how hard they pull."""

    model_root: Dir = option("/models", "every download must land under it", "--model-root", "DOWNLOADER_LOCAL_DIR")
    pvc_root: Dir | None = option(None, "`pvc://` sources must be under it (default: refused)", "--pvc-root")
    workers: Workers = option(
        DEFAULT_DOWNLOAD_WORKERS, "ranged reads in flight, all jobs", "--download-workers", "DOWNLOADER_NUM_THREADS"
    )
    chunk_size: Size = option(DEFAULT_CHUNK_SIZE, "bytes per ranged read", "--chunk-size")
    allow_request_endpoints: Switch = option(False, "requests may name a store endpoint", "--allow-request-endpoints")
    allow_suffixes: Suffixes = option((), "only these suffixes", "--allow-file-suffix", "DOWNLOADER_ALLOW_FILE_SUFFIX")
    verify_checksums: Verify = option(
        True, "checksum (default): sizes and checksums (MD5: 1.3 CPU-s/GiB); size: sizes only", "--verify"
    )
    # The pod's own store credentials and endpoints from its env (Kthena and AIBrix spellings); a request's
    # `config` overrides them, and they are never sent to an endpoint a request names (see sources/options.py).
    source_defaults: SourceOptions = Field(default_factory=SourceOptions, repr=False)


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True))
class Settings:
    """What `outrider serve` runs with."""

    engine: Engine = option(..., "vllm or sglang (vllmdisaggregated: vllm)", "-E", "--engine", "INFERENCE_ENGINE")
    engine_base_url: BaseUrl = option(
        "http://localhost:8000", "engine base URL", "-B", "--engine-base-url", "INFERENCE_ENGINE_ENDPOINT"
    )
    engine_metrics_path: UrlPath = option(
        "/metrics", "engine metrics path", "-M", "--engine-metrics-path", "METRIC_SCRAPE_PATH"
    )
    engine_api_key: SecretStr | None = option(
        None,
        "the engine's bearer token (prefer the variable: flags show in `ps`)",
        "--engine-api-key",
        "INFERENCE_ENGINE_API_KEY",
    )
    host: str = option("0.0.0.0", "address to listen on", "-H", "--host")
    port: Port = option(9000, "port to listen on", "-P", "--port")
    pod: str = option("", "pod identifier (default: the hostname)", "-I", "--pod", "POD_NAME")
    model: str | None = option(None, "served model name (default: asked of the engine)", "-N", "--model")
    scrape_interval: Seconds = option(1.0, "seconds between engine scrapes", "--scrape-interval")
    scrape_timeout: Seconds = option(2.0, "seconds one scrape may take", "--scrape-timeout")
    metrics_max_age: Seconds = option(3.0, "seconds a page stays fresh (default: 3 intervals)", "--metrics-max-age")
    metrics_profiles: Profiles = option(("outrider",), "name sets: outrider, kthena, aibrix, gie", "--metrics-profile")
    metrics_prefix: Prefix = option("outrider", "prefix of the unified names", "--metrics-prefix")
    log_level: LogLevel = option("info", "debug, info, warning or error (download: warning)", "--log-level")
    log_format: LogFormat | None = option(None, "json or text (default: json unless a terminal)", "--log-format")
    shutdown_grace: Seconds = option(1.0, "seconds in-flight requests get at shutdown", "--shutdown-grace")
    api_token: SecretStr | None = option(
        None, "bearer token for the routes that change state (prefer the variable)", "--api-token"
    )
    protect_metrics: Switch = option(False, "require the API token on /metrics too", "--protect-metrics")
    max_body_size: Size = option(1024 * 1024, "largest request body accepted", "--max-body-size")
    adapters_file: str | None = option(None, "YAML or JSON list of LoRA adapters to keep loaded", "--adapters-file")
    adapter_sync_interval: Seconds = option(5.0, "seconds between adapter checks", "--adapter-sync-interval")
    adapter_root: Dir = option("/adapters", "adapters' volume, at the same path in the engine", "--adapter-root")
    kv_events_endpoint: Zmq | None = option(None, "engine's KV-event publisher (default: off)", "--kv-events-endpoint")
    kv_events_topic: str = option("", "topic to subscribe to (default: all)", "--kv-events-topic")
    kv_events_replay_endpoint: Zmq | None = option(
        None, "engine's KV-event replay endpoint (default: asked of vLLM)", "--kv-events-replay-endpoint"
    )
    kv_hash_block_size: BlockSize = option(16, "tokens per hash: the router's blockSizeToHash", "--kv-hash-block-size")
    redis_url: RedisUrl | None = option(None, "Redis for the KV index (default: from REDIS_HOST)", "--redis-url")
    downloads: DownloadSettings = DownloadSettings()

    @property
    def engine_metrics_url(self) -> str:
        return self.engine_base_url.rstrip("/") + self.engine_metrics_path
