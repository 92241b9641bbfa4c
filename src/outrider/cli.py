"""Command line: `outrider serve` (and later subcommands).

Flags use the Kthena runtime's spellings; environment variables use the AIBrix runtime's spellings; every setting
also has an `OUTRIDER_*` variable. Precedence: flag, then `OUTRIDER_*`, then the peer's variable, then the default.
This is the only module besides `settings.py` that looks at the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from outrider import __version__
from outrider.settings import Settings, SettingsError, from_raw, parse_log_format_setting, parse_log_level
from outrider.sources.options import SourceOptions, env_defaults

if TYPE_CHECKING:
    from outrider.transfer.opener import SourceOpener


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flags, the environment variables that may carry it (first wins), and its help."""

    dest: str
    flags: tuple[str, ...]
    env: tuple[str, ...]
    help: str
    switch: bool = False  # a flag that takes no value (given = "true")


SERVE_OPTIONS: tuple[Option, ...] = (
    Option(
        "engine",
        ("-E", "--engine"),
        ("OUTRIDER_ENGINE", "INFERENCE_ENGINE"),
        "inference engine: vllm or sglang (vllmdisaggregated is taken as vllm)",
    ),
    Option("host", ("-H", "--host"), ("OUTRIDER_HOST",), "address to listen on (default 0.0.0.0)"),
    Option("port", ("-P", "--port"), ("OUTRIDER_PORT",), "port to listen on (default 9000)"),
    Option(
        "engine_base_url",
        ("-B", "--engine-base-url"),
        ("OUTRIDER_ENGINE_BASE_URL", "INFERENCE_ENGINE_ENDPOINT"),
        "engine base URL (default http://localhost:8000)",
    ),
    Option(
        "engine_metrics_path",
        ("-M", "--engine-metrics-path"),
        ("OUTRIDER_ENGINE_METRICS_PATH", "METRIC_SCRAPE_PATH"),
        "engine metrics path (default /metrics)",
    ),
    Option(
        "engine_api_key",
        ("--engine-api-key",),
        ("OUTRIDER_ENGINE_API_KEY", "INFERENCE_ENGINE_API_KEY"),
        "bearer token sent to the engine (prefer the environment variable: flags show in `ps`)",
    ),
    Option("pod", ("-I", "--pod"), ("OUTRIDER_POD", "POD_NAME"), "pod identifier (default: POD_NAME or hostname)"),
    Option("model", ("-N", "--model"), ("OUTRIDER_MODEL",), "served model name (default: asked of the engine)"),
    Option(
        "scrape_interval",
        ("--scrape-interval",),
        ("OUTRIDER_SCRAPE_INTERVAL",),
        "seconds between engine scrapes (default 1)",
    ),
    Option(
        "scrape_timeout",
        ("--scrape-timeout",),
        ("OUTRIDER_SCRAPE_TIMEOUT",),
        "seconds one scrape may take (default 2)",
    ),
    Option(
        "metrics_max_age",
        ("--metrics-max-age",),
        ("OUTRIDER_METRICS_MAX_AGE",),
        "seconds after which the last engine page is dropped as stale (default 3 scrape intervals)",
    ),
    Option(
        "metrics_profile",
        ("--metrics-profile",),
        ("OUTRIDER_METRICS_PROFILE",),
        "comma list of name sets to add: outrider, kthena, aibrix (default outrider)",
    ),
    Option(
        "metrics_prefix",
        ("--metrics-prefix",),
        ("OUTRIDER_METRICS_PREFIX",),
        "prefix of the unified names (default outrider)",
    ),
    Option("log_level", ("--log-level",), ("OUTRIDER_LOG_LEVEL",), "debug, info, warning or error"),
    Option(
        "log_format",
        ("--log-format",),
        ("OUTRIDER_LOG_FORMAT",),
        "json or text: one event per line (default: json unless stderr is a terminal)",
    ),
    Option(
        "shutdown_grace",
        ("--shutdown-grace",),
        ("OUTRIDER_SHUTDOWN_GRACE",),
        "seconds in-flight requests get at shutdown (default 1)",
    ),
    Option(
        "api_token",
        ("--api-token",),
        ("OUTRIDER_API_TOKEN",),
        "bearer token required by every route that changes state (prefer the env or --api-token-file: flags show "
        "in `ps`)",
    ),
    Option(
        "api_token_file",
        ("--api-token-file",),
        ("OUTRIDER_API_TOKEN_FILE",),
        "file holding the API token, e.g. a mounted Secret",
    ),
    Option(
        "protect_metrics",
        ("--protect-metrics",),
        ("OUTRIDER_PROTECT_METRICS",),
        "require the API token on /metrics too (probes stay open)",
        switch=True,
    ),
    Option(
        "max_body_size",
        ("--max-body-size",),
        ("OUTRIDER_MAX_BODY_SIZE",),
        "largest request body accepted (default 1MiB)",
    ),
    Option(
        "adapters_file",
        ("--adapters-file",),
        ("OUTRIDER_ADAPTERS_FILE",),
        "YAML or JSON list of {name, source} LoRA adapters to keep loaded; re-read when it changes",
    ),
    Option(
        "adapter_sync_interval",
        ("--adapter-sync-interval",),
        ("OUTRIDER_ADAPTER_SYNC_INTERVAL",),
        "seconds between checks of the engine's adapters against the declared set (default 5)",
    ),
    Option(
        "adapter_root",
        ("--adapter-root",),
        ("OUTRIDER_ADAPTER_ROOT",),
        "shared volume for adapters, mounted at the same path in the engine (default /adapters)",
    ),
    Option(
        "kv_events_endpoint",
        ("--kv-events-endpoint",),
        ("OUTRIDER_KV_EVENTS_ENDPOINT",),
        "engine's KV-event publisher, e.g. tcp://127.0.0.1:5557 (default off)",
    ),
    Option(
        "kv_events_topic",
        ("--kv-events-topic",),
        ("OUTRIDER_KV_EVENTS_TOPIC",),
        "topic to subscribe to (default: all)",
    ),
    Option(
        "kv_events_replay_endpoint",
        ("--kv-events-replay-endpoint",),
        ("OUTRIDER_KV_EVENTS_REPLAY_ENDPOINT",),
        "engine's replay endpoint (default: asked of vLLM's /kv_event_sources)",
    ),
    Option(
        "kv_hash_block_size",
        ("--kv-hash-block-size",),
        ("OUTRIDER_KV_HASH_BLOCK_SIZE",),
        "tokens per hashed chunk; must equal the router's blockSizeToHash (default 16)",
    ),
    Option(
        "redis_url",
        ("--redis-url",),
        ("OUTRIDER_REDIS_URL",),
        "Redis for the KV index, redis://[:password@]host:port/db (default: from REDIS_HOST, REDIS_PORT, "
        "REDIS_DB, REDIS_PASSWORD)",
    ),
)
# The Kthena runtime's Redis variables: environment only (no flags), read into the raw settings as they are.
REDIS_ENV = {
    "redis_host": "REDIS_HOST",
    "redis_port": "REDIS_PORT",
    "redis_db": "REDIS_DB",
    "redis_password": "REDIS_PASSWORD",
}


# Model download settings: shared by `serve` (for requests) and `download` (for the command line).
DOWNLOAD_SETTINGS_OPTIONS: tuple[Option, ...] = (
    Option(
        "model_root",
        ("--model-root",),
        ("OUTRIDER_MODEL_ROOT", "DOWNLOADER_LOCAL_DIR"),
        "directory every requested download must land under (default /models)",
    ),
    Option("pvc_root", ("--pvc-root",), ("OUTRIDER_PVC_ROOT",), "directory `pvc://` sources must be under"),
    Option(
        "download_workers",
        ("--download-workers",),
        ("OUTRIDER_DOWNLOAD_WORKERS", "DOWNLOADER_NUM_THREADS"),
        "ranged reads in flight across all downloads (default 8)",
    ),
    Option("chunk_size", ("--chunk-size",), ("OUTRIDER_CHUNK_SIZE",), "bytes per ranged read (default 16MiB)"),
    Option(
        "allow_request_endpoints",
        ("--allow-request-endpoints",),
        ("OUTRIDER_ALLOW_REQUEST_ENDPOINTS",),
        "let download requests name their own store endpoint in `config`",
        switch=True,
    ),
    Option(
        "allow_file_suffix",
        ("--allow-file-suffix",),
        ("OUTRIDER_ALLOW_FILE_SUFFIX", "DOWNLOADER_ALLOW_FILE_SUFFIX"),
        "download only files with these suffixes, e.g. 'json, safetensors' (default: every file)",
    ),
    Option(
        "verify",
        ("--verify",),
        ("OUTRIDER_VERIFY",),
        "checksum (default): sizes and the store's content checksums before publishing; size: sizes only "
        "(MD5 costs about 1.3 CPU-seconds per GiB)",
    ),
)
SERVE_OPTIONS = SERVE_OPTIONS + DOWNLOAD_SETTINGS_OPTIONS
# `outrider download` spells the worker count --workers too.
DOWNLOAD_OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(o, flags=("--workers", *o.flags)) if o.dest == "download_workers" else o
    for o in DOWNLOAD_SETTINGS_OPTIONS
) + tuple(o for o in SERVE_OPTIONS if o.dest in ("log_level", "log_format"))


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for opt in options:
        envs = ", ".join(opt.env)
        if opt.switch:
            parser.add_argument(
                *opt.flags,
                dest=opt.dest,
                default=None,
                action="store_const",
                const="true",
                help=f"{opt.help} [env: {envs}]",
            )
        else:
            parser.add_argument(*opt.flags, dest=opt.dest, default=None, help=f"{opt.help} [env: {envs}]")


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus an error; an operator reading pod logs wants the one line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"outrider: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="outrider", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"outrider {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    serve = sub.add_parser("serve", help="run the sidecar service")
    _add_options(serve, SERVE_OPTIONS)
    from outrider import download_cmd  # small: argparse wiring and the progress display only

    download = sub.add_parser("download", help="download a model into a directory, verified, resumable")
    download_cmd.add_arguments(download)
    _add_options(download, DOWNLOAD_OPTIONS)
    return parser


def resolve(args: argparse.Namespace, options: Sequence[Option], environ: Mapping[str, str]) -> dict[str, str | None]:
    """Flag first, then each environment variable in order; None when nothing was given."""
    raw: dict[str, str | None] = {}
    for opt in options:
        value: str | None = getattr(args, opt.dest)
        if value is None:
            value = next((environ[name] for name in opt.env if environ.get(name)), None)
        raw[opt.dest] = value
    return raw


def source_defaults(environ: Mapping[str, str]) -> SourceOptions:
    """The pod's store credentials and endpoints from its env (ACCESS_KEY, AWS_*, TOS_*, HF_TOKEN, ...)."""
    try:
        return env_defaults(environ)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    raw = resolve(args, SERVE_OPTIONS, environ)
    raw.update({dest: environ.get(name) or None for dest, name in REDIS_ENV.items()})
    if not raw["pod"]:
        raw["pod"] = socket.gethostname()
    token_file = raw.pop("api_token_file", None)
    if token_file and not raw.get("api_token"):
        try:
            raw["api_token"] = Path(token_file).read_text()
        except OSError as exc:
            raise SettingsError(f"--api-token-file: cannot read {token_file}: {exc.strerror}") from None
    settings = from_raw(raw)
    downloads = dataclasses.replace(settings.downloads, source_defaults=source_defaults(environ))
    return dataclasses.replace(settings, downloads=downloads)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    source_opener: SourceOpener | None = None,
) -> int:
    """Run a command; `source_opener` replaces the built-in stores (tests use it to serve a local one)."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "serve":
        try:
            settings = serve_settings(args, env)
        except SettingsError as exc:
            print(f"outrider: error: {exc}", file=sys.stderr)
            return 2
        from outrider.service import run  # imported late: `--help` should not pay for the server stack

        return run(settings, source_opener=source_opener)
    if args.command == "download":
        from outrider import download_cmd

        raw = resolve(args, DOWNLOAD_OPTIONS, env)
        try:
            defaults = source_defaults(env)
            _download_logging(raw, defaults)
        except SettingsError as exc:
            print(f"outrider: error: {exc}", file=sys.stderr)
            return 2
        return download_cmd.main(args, raw, source_opener, defaults)
    raise AssertionError(f"unhandled command {args.command!r}")


def _download_logging(raw: Mapping[str, str | None], defaults: SourceOptions) -> None:
    """`outrider download` logs like `serve` (the progress display is separate); warnings and up by default."""
    from outrider import logs

    level = parse_log_level((raw.get("log_level") or "warning").strip())
    logs.configure(level, parse_log_format_setting(raw.get("log_format")))
    logs.REDACTOR.register(logs.source_secrets(defaults), pinned=True)
