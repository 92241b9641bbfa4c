"""Command line: `outrider serve` and `outrider download`, their options built from the fields of `Settings`.

A flag beats its `OUTRIDER_*` variable, which beats the peer runtime's (settings.py spells them all). pydantic-settings
reads the variables from the mapping `main` is given (os.environ when run): nothing else reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, cast

from pydantic import ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, EnvSettingsSource

from outrider import __version__, download_cmd, logs
from outrider.lifecycle.arguments import engine_environment
from outrider.lifecycle.options import LifecycleSettings
from outrider.option_types import LogFormat, LogLevel, option, rank_endpoint
from outrider.settings import Settings, SettingsError
from outrider.sources.options import SourceOptions, env_defaults
from outrider.transfer.opener import SourceOpener
from outrider.transfer.settings import DownloadSettings


class Option(NamedTuple):
    """One setting as an operator spells it: the field it sets, its flags, its variables (first wins), its help."""

    field: str  # a field of Settings, or `group.field` for a group's (Settings.downloads, Settings.engines)
    flags: tuple[str, ...]
    env: tuple[str, ...]
    info: FieldInfo

    @property
    def dest(self) -> str:
        return self.env[0].removeprefix("OUTRIDER_").lower()

    @property
    def name(self) -> str:
        """The field's name in its own class (groups reuse names: the sidecar's host, the engines' host)."""
        return self.field.rpartition(".")[2]


def _option(field: str, info: FieldInfo) -> Option:
    spelled = cast(dict[str, list[str]], info.json_schema_extra)  # see settings.option
    return Option(field, tuple(spelled["flags"]), tuple(spelled["env"]), info)


def _options(cls: type[Any], group: str = "") -> tuple[Option, ...]:
    fields = cls.__pydantic_fields__.items()
    return tuple(_option(f"{group}.{name}" if group else name, info) for name, info in fields if info.json_schema_extra)


SETTINGS_OPTIONS = _options(Settings)
DOWNLOAD_SETTINGS_OPTIONS = _options(DownloadSettings, "downloads")
LIFECYCLE_OPTIONS = _options(LifecycleSettings, "engines")
# Inputs to a setting rather than settings: a file holding the API token, the Kthena runtime's Redis variables.
TOKEN_FILE = _option(
    "api_token_file", option(None, "file holding the API token, e.g. a mounted Secret", "--api-token-file")
)
REDIS_ENV = tuple(
    _option(f"redis_{v[6:].lower()}", option(None, "", v))
    for v in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")
)
SERVE_OPTIONS = (*SETTINGS_OPTIONS, TOKEN_FILE, *DOWNLOAD_SETTINGS_OPTIONS, *LIFECYCLE_OPTIONS)
# `outrider download` spells the worker count --workers too (and -w/--max-workers, Kthena's downloader's), and it
# logs like `serve`; its SOURCE is the command's own (with AIBrix's --model-uri), not serve's pod model.
SERVE_ONLY = ("downloads.pod_model", "downloads.pod_model_dir")
DOWNLOAD_OPTIONS = tuple(
    o._replace(flags=("-w", "--max-workers", "--workers", *o.flags)) if o.field == "downloads.workers" else o
    for o in SERVE_OPTIONS
    if (o in DOWNLOAD_SETTINGS_OPTIONS and o.field not in SERVE_ONLY) or o.field in ("log_level", "log_format")
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus an error; an operator reading pod logs wants the one line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"outrider: error: {message}\n")


def shown_default(info: FieldInfo) -> str | None:
    """A field's default as the help (and README) writes it; None for none, an empty value, a switch or required."""
    value = info.default
    if isinstance(value, bool) or value in (None, "", ()) or value is PydanticUndefined:
        return None
    if isinstance(value, int) and value % 2**20 == 0:
        return f"{value >> 20}MiB"
    if isinstance(value, tuple):  # a list of names, or a range of numbers (ports)
        return ("-" if isinstance(value[0], int) else ",").join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for o in options:
        help, default = o.info.description or "", shown_default(o.info)
        help += f" (default {default})" if default and "default" not in help else ""
        switch: Any = {"action": "store_const", "const": "true"} if o.info.default is False else {}  # off unless given
        parser.add_argument(*o.flags, dest=o.dest, help=f"{help} [env: {', '.join(o.env)}]", **switch)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="outrider", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"outrider {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    _add_options(sub.add_parser("serve", help="run the sidecar service"), SERVE_OPTIONS)
    download = sub.add_parser("download", help="download a model into a directory, verified, resumable")
    download_cmd.add_arguments(download)
    _add_options(download, DOWNLOAD_OPTIONS)
    return parser


class _Environ(EnvSettingsSource):
    """pydantic-settings' lookup of a field's variables (its AliasChoices in order, case-sensitive, an empty value
    counting as unset) in the mapping given rather than in os.environ: `main` passes os.environ, tests their own."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(BaseSettings, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value for name, value in self._environ.items() if value}


def resolve(args: argparse.Namespace, options: Sequence[Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each option's text: its flag, else its first variable set. Options given nowhere are left out."""
    env = _Environ(environ)
    raw = {o.field: getattr(args, o.dest, None) or env.get_field_value(o.info, o.field)[0] for o in options}
    return {field: value for field, value in raw.items() if value}


def _build(cls: type[Any], values: Mapping[str, Any], options: Sequence[Option]) -> Any:
    """`cls(**values)`, or a SettingsError that names the flag (or variable), among `cls`'s options, of the first
    value refused."""
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        o = next(o for o in options if error["loc"][0] in (o.name, *o.env))
        text = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            text = f"required (also read from {', '.join(o.env)})"
        elif error["type"] != "value_error":  # pydantic's own messages do not show the value; ours do
            text += f", got {error['input']!r}"
        raise SettingsError(f"{o.flags[-1]}: {text}") from None


def _group(cls: type[Any], options: Sequence[Option], raw: dict[str, Any], **extra: Any) -> Any:
    """A group of settings (downloads, the engine lifecycle) from its options in `raw` (taken out of it)."""
    return _build(cls, {**{o.name: raw.pop(o.field) for o in options if o.field in raw}, **extra}, options)


def _pod_store(environ: Mapping[str, str]) -> SourceOptions:
    """The pod's store credentials and endpoints from its env (ACCESS_KEY, AWS_*, TOS_*, HF_TOKEN, ...)."""
    try:
        return env_defaults(environ)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """`serve`'s Settings; the rules here are those across options (a token's file, Redis's parts, derived defaults)."""
    raw = resolve(args, (*SERVE_OPTIONS, *REDIS_ENV), environ)
    token_file = raw.pop("api_token_file", None)
    if token_file and "api_token" not in raw:  # a token given itself wins over a file
        try:
            raw["api_token"] = Path(token_file).read_text()
        except OSError as exc:
            raise SettingsError(f"--api-token-file: cannot read {token_file}: {exc.strerror}") from None
    # An operator's token must be long enough to resist guessing (tests build Settings with short ones); never echoed.
    token = raw.get("api_token", "").strip()
    if "api_token" in raw and (len(token) < 16 or any(c.isspace() for c in token)):
        raise SettingsError("--api-token: must be at least 16 characters with no white space")
    redis = {k[6:]: raw.pop(k) for k in list(raw) if k.startswith("redis_") and k != "redis_url"}
    if "host" in redis and "redis_url" not in raw:  # the Kthena runtime's REDIS_HOST, _PORT, _DB, _PASSWORD
        port, db, host = redis.get("port", "6379"), redis.get("db", "0"), redis["host"]
        for name, value, top in (("REDIS_PORT", port, 65535), ("REDIS_DB", db, 2**31)):
            if not value.isdigit() or int(value) > top:
                raise SettingsError(f"{name}: expected a whole number up to {top}, got {value!r}")
        auth = f":{urllib.parse.quote(redis['password'], safe='')}@" if "password" in redis else ""
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        raw["redis_url"] = f"redis://{auth}{host}:{int(port)}/{int(db)}"
    if "kv_events_endpoint" in raw and "redis_url" not in raw:
        raise SettingsError("--redis-url: required with --kv-events-endpoint (or set REDIS_HOST)")
    downloads = _group(DownloadSettings, DOWNLOAD_SETTINGS_OPTIONS, raw, source_defaults=_pod_store(environ))
    engines = _group(LifecycleSettings, LIFECYCLE_OPTIONS, raw, environment=engine_environment(environ))
    settings: Settings = _build(
        Settings,
        {
            "pod": socket.gethostname(),
            **raw,
            "api_token": token or None,
            "downloads": downloads,
            "engines": engines,
        },
        SETTINGS_OPTIONS,
    )
    if "metrics_max_age" not in raw:
        settings = dataclasses.replace(settings, metrics_max_age=3 * settings.scrape_interval)
    for endpoint in (settings.kv_events_endpoint, settings.kv_events_replay_endpoint):
        try:  # every rank's endpoint must exist: the last rank's is the furthest from rank 0's
            if endpoint is not None and settings.kv_events_ranks is not None:
                rank_endpoint(endpoint, settings.kv_events_ranks - 1)
        except ValueError as exc:
            raise SettingsError(f"--kv-events-ranks: {exc}") from None
    return settings


@dataclass(frozen=True)
class _Logging:
    log_level: LogLevel = "warning"  # `outrider download` logs warnings and up unless told otherwise
    log_format: LogFormat | None = None


COMMANDS = ("serve", "download")
# AIBrix's runtime listens on 8080 unless told otherwise; `aibrix_runtime` keeps that default.
AIBRIX_PORT = "8080"


def with_command(argv: Sequence[str]) -> list[str]:
    """`argv` with `serve` put first when it starts with an option: Kthena's manifests give the runtime only `args:`
    (`--port 8900 --engine vllm ...`), which with outrider's image (ENTRYPOINT outrider, CMD serve) replace the CMD.
    `--help` and `--version` alone still ask about outrider itself."""
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        return ["serve", *argv]
    return list(argv)


def _multiproc_dir() -> None:
    """prometheus-client stores every value in a file under $PROMETHEUS_MULTIPROC_DIR when that is set (AIBrix's
    manifests set it); a directory not made yet must not stop the start, so it is made, as AIBrix does. Unlike AIBrix
    outrider does not empty it: outrider serves its own registry, never the directory's files, and the directory may
    be one another process shares."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise SettingsError(f"PROMETHEUS_MULTIPROC_DIR: cannot create {directory}: {exc.strerror}") from None


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    source_opener: SourceOpener | None = None,
) -> int:
    """Run a command; `source_opener` replaces the built-in stores (tests use it to serve a local one)."""
    args = build_parser().parse_args(with_command(sys.argv[1:] if argv is None else argv))
    env = os.environ if environ is None else environ
    try:
        if args.command == "serve":
            settings = serve_settings(args, env)
            _multiproc_dir()
        else:
            raw, pod_store = resolve(args, DOWNLOAD_OPTIONS, env), _pod_store(env)
            logged: dict[str, Any] = {k: raw.pop(k) for k in ("log_level", "log_format") if k in raw}
            logging: _Logging = _build(_Logging, logged, DOWNLOAD_OPTIONS)
            logs.configure(logging.log_level, logging.log_format)  # as `serve` logs; the progress display is apart
            logs.REDACTOR.register(logs.secrets_in(pod_store), pinned=True)
            downloads = _group(DownloadSettings, DOWNLOAD_SETTINGS_OPTIONS, raw, source_defaults=pod_store)
    except SettingsError as exc:
        print(f"outrider: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "download":
        return download_cmd.main(args, downloads, source_opener)
    from outrider.service import run  # imported late: `--help` should not pay for the server stack

    return run(settings, source_opener=source_opener)


def aibrix_argv(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """`aibrix_runtime`'s command line as `outrider serve`'s: AIBrix's default port (8080) unless a port is given,
    and its one other flag, `--enable-fastapi-docs`, dropped (outrider always serves /openapi.json and /docs)."""
    given = [a for a in argv if a != "--enable-fastapi-docs"]
    port_given = any(a in ("--port", "-P") or a.startswith("--port=") for a in given) or "OUTRIDER_PORT" in environ
    return ["serve", *([] if port_given else ["--port", AIBRIX_PORT]), *given]


def aibrix_main() -> int:
    """`aibrix_runtime`, the command AIBrix's webhook injects into the sidecar container."""
    return main(aibrix_argv(sys.argv[1:], os.environ))
