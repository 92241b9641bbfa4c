"""The one Settings object, validated once at start.

Only `cli.py` turns flags and environment variables into raw strings; this module turns those strings into a
frozen, validated `Settings` or raises `SettingsError` with one line naming the setting and the problem.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping

import httpx

from outrider.logs import parse_log_format
from outrider.sources.options import SourceOptions

ENGINES = ("vllm", "sglang")
# Kthena accepts this spelling for a vLLM that serves disaggregated prefill/decode; the APIs are vLLM's.
ENGINE_ALIASES = {"vllmdisaggregated": "vllm"}
METRICS_PROFILES = ("outrider", "kthena", "aibrix")
_PREFIX_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Downloads: 16 MiB chunks keep per-request overhead (a ranged GET, a manifest entry) under 1% on any store while a
# crash loses at most workers x 16 MiB; 8 workers saturate a 10 Gb/s link from S3-like stores in our measurements.
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_DOWNLOAD_WORKERS = 8
MAX_DOWNLOAD_WORKERS = 64
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


@dataclasses.dataclass(frozen=True)
class DownloadSettings:
    """Where downloads may land and how hard they pull."""

    model_root: str = "/models"  # every request's destination is confined under it
    pvc_root: str | None = None  # `pvc://` sources are confined under it; None refuses them
    workers: int = DEFAULT_DOWNLOAD_WORKERS  # ranged reads in flight, shared by all jobs
    chunk_size: int = DEFAULT_CHUNK_SIZE
    allow_request_endpoints: bool = False  # may a request's `config` name its own store endpoint (SSRF risk)?
    allow_suffixes: tuple[str, ...] = ()  # only files ending in one of these; empty = every file
    verify_checksums: bool = True  # --verify checksum (default) or size
    # The pod's own store credentials and endpoints from its env (Kthena and AIBrix spellings); a request's
    # `config` overrides them, and they are never sent to an endpoint a request names (see sources/options.py).
    source_defaults: SourceOptions = dataclasses.field(default_factory=SourceOptions, repr=False)


@dataclasses.dataclass(frozen=True)
class Settings:
    engine: str
    engine_base_url: str
    engine_metrics_path: str = "/metrics"
    # repr=False: the key must never reach a log line through a repr of the settings.
    engine_api_key: str | None = dataclasses.field(default=None, repr=False)
    host: str = "0.0.0.0"
    port: int = 9000
    pod: str = ""
    model: str | None = None
    scrape_interval: float = 1.0
    scrape_timeout: float = 2.0
    metrics_max_age: float = 3.0
    metrics_profiles: tuple[str, ...] = ("outrider",)
    metrics_prefix: str = "outrider"
    log_level: str = "info"
    log_format: str | None = None  # json or text; None: JSON unless stderr is a terminal (see logs.configure)
    shutdown_grace: float = 1.0
    # The control API: a bearer token for state-changing routes (None: open), whether /metrics needs it too, and
    # the largest request body accepted. repr=False: the token must never reach a log line.
    api_token: str | None = dataclasses.field(default=None, repr=False)
    protect_metrics: bool = False
    max_body_size: int = 1024 * 1024
    # LoRA adapters: the declared set in a file (optional), how often the engine is checked against it, and the
    # shared volume adapters live on (the engine mounts it at the same path and is handed paths under it).
    adapters_file: str | None = None
    adapter_sync_interval: float = 5.0
    adapter_root: str = "/adapters"
    # KV-cache events -> Redis for the Kthena router (off unless kv_events_endpoint is set).
    kv_events_endpoint: str | None = None
    kv_events_topic: str = ""
    kv_events_replay_endpoint: str | None = None
    kv_hash_block_size: int = 16
    # repr=False: the URL may carry the Redis password.
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    downloads: DownloadSettings = DownloadSettings()

    @property
    def engine_metrics_url(self) -> str:
        return self.engine_base_url.rstrip("/") + self.engine_metrics_path


def parse_engine(raw: str) -> str:
    name = raw.strip().lower()
    name = ENGINE_ALIASES.get(name, name)
    if name not in ENGINES:
        raise SettingsError(f"--engine: unknown engine {raw!r} (expected one of: {', '.join(ENGINES)})")
    return name


def parse_base_url(raw: str, setting: str) -> str:
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise SettingsError(f"{setting}: malformed URL {raw!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise SettingsError(f"{setting}: malformed URL {raw!r}: expected http(s)://host[:port]")
    if url.query or url.fragment:
        raise SettingsError(f"{setting}: URL {raw!r} must not carry a query or fragment")
    return str(url).rstrip("/")


def parse_path(raw: str, setting: str) -> str:
    path = raw.strip()
    if not path.startswith("/") or any(c in path for c in "?# "):
        raise SettingsError(f"{setting}: expected an absolute URL path like /metrics, got {raw!r}")
    return path


def parse_dir(raw: str, setting: str) -> str:
    path = raw.strip()
    if not path.startswith("/"):
        raise SettingsError(f"{setting}: expected an absolute directory path, got {raw!r}")
    return path.rstrip("/") or "/"


def parse_seconds(raw: str, setting: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{setting}: expected a number of seconds, got {raw!r}") from None
    if not value > minimum or value != value or value == float("inf"):
        raise SettingsError(f"{setting}: must be a finite number of seconds above {minimum:g}, got {raw!r}")
    return value


def parse_port(raw: str, setting: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise SettingsError(f"{setting}: expected a TCP port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{setting}: port {port} is out of range 0-65535")
    return port


def parse_profiles(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip().lower() for p in raw.split(",") if p.strip()))
    if not names:
        raise SettingsError("--metrics-profile: empty (expected a comma list of: outrider, kthena, aibrix)")
    unknown = [n for n in names if n not in METRICS_PROFILES]
    if unknown:
        raise SettingsError(
            f"--metrics-profile: unknown profile {unknown[0]!r} (expected: {', '.join(METRICS_PROFILES)})"
        )
    return names


_ZMQ_ENDPOINT_RE = re.compile(r"^(tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}|ipc://.+)$")


def parse_zmq_endpoint(raw: str, setting: str) -> str:
    endpoint = raw.strip()
    if not _ZMQ_ENDPOINT_RE.match(endpoint):
        raise SettingsError(f"{setting}: expected a ZMQ endpoint like tcp://127.0.0.1:5557, got {raw!r}")
    return endpoint


def parse_redis_url(raw: Mapping[str, str | None]) -> str | None:
    """--redis-url, else a URL built from the Kthena runtime's REDIS_HOST/PORT/DB/PASSWORD; None when neither."""
    url = raw.get("redis_url")
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            # The value is not echoed: it may hold a password.
            raise SettingsError("--redis-url: expected a redis://, rediss:// or unix:// URL")
        return url
    host = raw.get("redis_host")
    if not host:
        return None
    port = parse_port(raw.get("redis_port") or "6379", "REDIS_PORT")
    db_raw = raw.get("redis_db") or "0"
    if not db_raw.isdigit():
        raise SettingsError(f"REDIS_DB: expected a database number, got {db_raw!r}")
    password = raw.get("redis_password")
    auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"redis://{auth}{host}:{port}/{int(db_raw)}"


def parse_size(raw: str, setting: str) -> int:
    """A byte count: `16777216`, `16MiB`, `16M`, `512k`."""
    match = _SIZE_RE.match(raw)
    if not match:
        raise SettingsError(f"{setting}: expected a size like 16MiB or 1048576, got {raw!r}")
    value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()]
    if not 64 * 1024 <= value <= 4 * 1024**3:
        raise SettingsError(f"{setting}: {raw!r} is out of range 64KiB-4GiB")
    return value


def parse_workers(raw: str, setting: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{setting}: expected a whole number of workers, got {raw!r}") from None
    if not 1 <= value <= MAX_DOWNLOAD_WORKERS:
        raise SettingsError(f"{setting}: {value} is out of range 1-{MAX_DOWNLOAD_WORKERS}")
    return value


def parse_bool(raw: str, setting: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{setting}: expected true or false, got {raw!r}")


def parse_suffixes(raw: str) -> tuple[str, ...]:
    """AIBrix's DOWNLOADER_ALLOW_FILE_SUFFIX spelling: `json, safetensors` (a leading dot is optional)."""
    return tuple(dict.fromkeys(s.strip().lstrip(".").lower() for s in raw.split(",") if s.strip().lstrip(".")))


def download_settings(raw: Mapping[str, str | None]) -> DownloadSettings:
    """DownloadSettings from resolved raw strings (keys: model_root, pvc_root, download_workers, chunk_size,
    allow_request_endpoints, allow_file_suffix); missing keys take the defaults."""
    pvc = raw.get("pvc_root")
    return DownloadSettings(
        model_root=parse_dir(raw.get("model_root") or "/models", "--model-root"),
        pvc_root=parse_dir(pvc, "--pvc-root") if pvc else None,
        workers=parse_workers(raw.get("download_workers") or str(DEFAULT_DOWNLOAD_WORKERS), "--download-workers"),
        chunk_size=parse_size(raw.get("chunk_size") or str(DEFAULT_CHUNK_SIZE), "--chunk-size"),
        allow_request_endpoints=parse_bool(raw.get("allow_request_endpoints") or "false", "--allow-request-endpoints"),
        allow_suffixes=parse_suffixes(raw.get("allow_file_suffix") or ""),
        verify_checksums=parse_verify(raw.get("verify") or "checksum"),
    )


def parse_api_token(raw: str | None) -> str | None:
    """The API token as given (its file already read by cli.py); None when unset. Never echoed in errors."""
    if raw is None or raw == "":
        return None
    token = raw.strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise SettingsError("--api-token: must be at least 16 characters with no white space")
    return token


def parse_verify(raw: str) -> bool:
    """--verify: `checksum` (sizes and the store's content checksums) or `size` (sizes only); True for checksum."""
    value = raw.strip().lower()
    if value not in ("checksum", "size"):
        raise SettingsError(f"--verify: expected checksum or size, got {raw!r}")
    return value == "checksum"


LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_log_level(raw: str) -> str:
    level = raw.lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"--log-level: expected debug, info, warning or error, got {level!r}")
    return level


def parse_log_format_setting(raw: str | None) -> str | None:
    """`--log-format` (json, text, or None for the terminal-dependent default), as a SettingsError when wrong."""
    try:
        return parse_log_format(raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def from_raw(raw: Mapping[str, str | None]) -> Settings:
    """Build Settings from resolved raw strings (None = not given anywhere; the default applies)."""

    def get(key: str, default: str) -> str:
        value = raw.get(key)
        return default if value is None or value == "" else value

    interval = parse_seconds(get("scrape_interval", "1"), "--scrape-interval")
    max_age_raw = raw.get("metrics_max_age")
    max_age = 3 * interval if not max_age_raw else parse_seconds(max_age_raw, "--metrics-max-age")
    prefix = get("metrics_prefix", "outrider")
    if not _PREFIX_RE.match(prefix):
        raise SettingsError(f"--metrics-prefix: {prefix!r} is not a valid metric name prefix")
    log_level = parse_log_level(get("log_level", "info"))
    kv_endpoint = raw.get("kv_events_endpoint") or None
    if kv_endpoint is not None:
        kv_endpoint = parse_zmq_endpoint(kv_endpoint, "--kv-events-endpoint")
    replay = raw.get("kv_events_replay_endpoint") or None
    if replay is not None:
        replay = parse_zmq_endpoint(replay, "--kv-events-replay-endpoint")
    hash_size_raw = get("kv_hash_block_size", "16")
    if not hash_size_raw.isdigit() or not 1 <= int(hash_size_raw) <= 1_000_000:
        raise SettingsError(f"--kv-hash-block-size: expected a positive number of tokens, got {hash_size_raw!r}")
    redis_url = parse_redis_url(raw)
    if kv_endpoint is not None and redis_url is None:
        raise SettingsError("--redis-url: required with --kv-events-endpoint (or set REDIS_HOST)")
    engine_raw = raw.get("engine")
    if not engine_raw:
        raise SettingsError("--engine: required (vllm or sglang); also read from INFERENCE_ENGINE")
    return Settings(
        engine=parse_engine(engine_raw),
        engine_base_url=parse_base_url(get("engine_base_url", "http://localhost:8000"), "--engine-base-url"),
        engine_metrics_path=parse_path(get("engine_metrics_path", "/metrics"), "--engine-metrics-path"),
        engine_api_key=raw.get("engine_api_key") or None,
        host=get("host", "0.0.0.0"),
        port=parse_port(get("port", "9000"), "--port"),
        pod=get("pod", ""),
        model=raw.get("model") or None,
        scrape_interval=interval,
        scrape_timeout=parse_seconds(get("scrape_timeout", "2"), "--scrape-timeout"),
        metrics_max_age=max_age,
        metrics_profiles=parse_profiles(get("metrics_profile", "outrider")),
        metrics_prefix=prefix,
        log_level=log_level,
        log_format=parse_log_format_setting(raw.get("log_format")),
        shutdown_grace=parse_seconds(get("shutdown_grace", "1"), "--shutdown-grace"),
        api_token=parse_api_token(raw.get("api_token")),
        protect_metrics=parse_bool(get("protect_metrics", "false"), "--protect-metrics"),
        max_body_size=parse_size(get("max_body_size", "1MiB"), "--max-body-size"),
        adapters_file=raw.get("adapters_file") or None,
        adapter_sync_interval=parse_seconds(get("adapter_sync_interval", "5"), "--adapter-sync-interval"),
        adapter_root=parse_dir(get("adapter_root", "/adapters"), "--adapter-root"),
        kv_events_endpoint=kv_endpoint,
        kv_events_topic=get("kv_events_topic", ""),
        kv_events_replay_endpoint=replay,
        kv_hash_block_size=int(hash_size_raw),
        redis_url=redis_url,
        downloads=download_settings(raw),
    )
