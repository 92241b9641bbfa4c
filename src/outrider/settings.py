"""The one Settings object: every option an operator can set, with its spellings, units and validation.

`Settings` and its groups (`DownloadSettings` in transfer/settings.py, `LifecycleSettings` in lifecycle/options.py,
each beside the code that reads it) are frozen pydantic dataclasses, validated whenever one is built: by cli.py from
flags and the environment, or directly by tests (which also `dataclasses.replace` them). Each field's `option`
(option_types.py) names its flags (the Kthena spellings) and the variables read for it, `OUTRIDER_<LONG FLAG>` and
then the peer runtime's. Secrets are `SecretStr`: never printed, and found by type by the log redactor.
"""

from __future__ import annotations

from pydantic import ConfigDict, SecretStr
from pydantic.dataclasses import dataclass

from outrider.lifecycle.options import LifecycleSettings
from outrider.option_types import (
    BaseUrl,
    BlockSize,
    Dir,
    Engine,
    KvRanks,
    LogFormat,
    LogLevel,
    Port,
    Prefix,
    Profiles,
    RedisUrl,
    Seconds,
    Size,
    Switch,
    UrlPath,
    Zmq,
    option,
)
from outrider.transfer.settings import DownloadSettings


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line meant for the operator."""


@dataclass(frozen=True, config=ConfigDict(validate_by_name=True))
class Settings:
    """What `outrider serve` runs with."""

    engine: Engine = option("vllm", "vllm or sglang (vllmdisaggregated: vllm)", "-E", "--engine", "INFERENCE_ENGINE")
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
    aibrix_adapter_dir: Dir = option(
        "/tmp/aibrix/adapters",
        "where AIBrix delegation loads land (AIBrix's own: the emptyDir its webhook mounts in every container)",
        "--aibrix-adapter-dir",
    )
    kv_events_endpoint: Zmq | None = option(None, "engine's KV-event publisher (default: off)", "--kv-events-endpoint")
    kv_events_topic: str = option("", "topic to subscribe to (default: all)", "--kv-events-topic")
    kv_events_replay_endpoint: Zmq | None = option(
        None, "engine's KV-event replay endpoint (default: asked of vLLM)", "--kv-events-replay-endpoint"
    )
    kv_events_ranks: KvRanks | None = option(
        None,
        "data-parallel ranks publishing, rank r on the endpoint's port + r (default: asked of vLLM, else 1)",
        "--kv-events-ranks",
    )
    kv_hash_block_size: BlockSize = option(16, "tokens per hash: the router's blockSizeToHash", "--kv-hash-block-size")
    redis_url: RedisUrl | None = option(None, "Redis for the KV index (default: from REDIS_HOST)", "--redis-url")
    # The engine lifecycle (AIBrix's model-runtime routes): its own options, off unless --engine-launch is given.
    engines: LifecycleSettings = LifecycleSettings()
    downloads: DownloadSettings = DownloadSettings()

    @property
    def engine_metrics_url(self) -> str:
        return self.engine_base_url.rstrip("/") + self.engine_metrics_path

    @property
    def lifecycle(self) -> LifecycleSettings | None:
        """The engine lifecycle's settings, or None while it is off (no command allowed)."""
        return self.engines if self.engines.commands else None
