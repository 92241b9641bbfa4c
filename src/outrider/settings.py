"""The one Settings object: every option an operator can set, with its spellings, units and validation.

`Settings` (and the `DownloadSettings` in it) are frozen pydantic dataclasses, validated whenever one is built: by
cli.py from flags and the environment, or directly by tests (which also `dataclasses.replace` them). Each field's
`option` names its flags (the Kthena spellings) and the variables read for it, `OUTRIDER_<LONG FLAG>` and then the
peer runtime's. Secrets are `SecretStr`: never printed, and found by type by the log redactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, ConfigDict, Field, SecretStr
from pydantic.dataclasses import dataclass

from outrider.lifecycle.config import (
    DEFAULT_PORTS,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_GRACE,
    LifecycleSettings,
)
from outrider.option_types import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DOWNLOAD_WORKERS,
    BaseUrl,
    BlockSize,
    Dir,
    Engine,
    Launch,
    LogFormat,
    LogLevel,
    OnExit,
    Port,
    PortRange,
    Prefix,
    Profiles,
    RedisUrl,
    Seconds,
    Size,
    Suffixes,
    Switch,
    UrlPath,
    Verify,
    Workers,
    Zmq,
)
from outrider.sources.options import SourceOptions


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


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
    # The engine lifecycle (AIBrix's model-runtime routes): off unless --engine-launch names what may be launched.
    engine_launch: Launch | None = option(
        None, "what engines may be launched with: vllm=COMMAND;sglang=COMMAND (default: off)", "--engine-launch"
    )
    engine_ports: PortRange = option(
        "-".join(map(str, DEFAULT_PORTS)), "ports launched engines may listen on", "--engine-ports"
    )
    engine_host: str = option("0.0.0.0", "address launched engines listen on", "--engine-host")
    engine_state_dir: Dir = option(
        "/tmp/outrider-engines", "launched engines' records and output (per pod, never shared)", "--engine-state-dir"
    )
    engine_stop_grace: Seconds = option(
        DEFAULT_STOP_GRACE, "seconds a stopping engine gets before SIGKILL", "--engine-stop-grace"
    )
    engine_ready_timeout: Seconds = option(
        DEFAULT_READY_TIMEOUT, "seconds a launched engine may take to answer /health", "--engine-ready-timeout"
    )
    engine_dev_routes: Switch = option(
        False, "launch vLLM with its development routes (needed by sleep and wake)", "--engine-dev-routes"
    )
    engine_on_exit: OnExit = option("stop", "stop, or keep engines running for the next outrider", "--engine-on-exit")
    # What launched engines inherit of outrider's environment (cli.py takes it from the process, without outrider's
    # settings and credentials: see lifecycle/arguments.engine_environment).
    engine_environment: tuple[tuple[str, str], ...] = Field(default=(), repr=False)
    downloads: DownloadSettings = DownloadSettings()

    @property
    def engine_metrics_url(self) -> str:
        return self.engine_base_url.rstrip("/") + self.engine_metrics_path

    @property
    def lifecycle(self) -> LifecycleSettings | None:
        """The engine lifecycle's own settings, or None while it is off."""
        if self.engine_launch is None:
            return None
        low, _, high = self.engine_ports.partition("-")
        return LifecycleSettings(
            commands=self.engine_launch,
            state_dir=Path(self.engine_state_dir),
            ports=(int(low), int(high)),
            host=self.engine_host,
            stop_grace=self.engine_stop_grace,
            ready_timeout=self.engine_ready_timeout,
            dev_routes=self.engine_dev_routes,
            on_exit="keep" if self.engine_on_exit == "keep" else "stop",
            environment=self.engine_environment,
        )
