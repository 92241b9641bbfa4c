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
from outrider.option_types import LogFormat, LogLevel
from outrider.settings import DownloadSettings, Settings, SettingsError, option
from outrider.sources.options import SourceOptions, env_defaults
from outrider.transfer.opener import SourceOpener


class Option(NamedTuple):
    """One setting as an operator spells it: the field it sets, its flags, its variables (first wins), its help."""

    field: str
    flags: tuple[str, ...]
    env: tuple[str, ...]
    info: FieldInfo

    @property
    def dest(self) -> str:
        return self.env[0].removeprefix("OUTRIDER_").lower()


def _option(field: str, info: FieldInfo) -> Option:
    spelled = cast(dict[str, list[str]], info.json_schema_extra)  # see settings.option
    return Option(field, tuple(spelled["flags"]), tuple(spelled["env"]), info)


def _options(cls: type[Any]) -> tuple[Option, ...]:
    return tuple(_option(name, info) for name, info in cls.__pydantic_fields__.items() if info.json_schema_extra)


DOWNLOAD_SETTINGS_OPTIONS = _options(DownloadSettings)
# Inputs to a setting rather than settings: a file holding the API token, the Kthena runtime's Redis variables.
TOKEN_FILE = _option(
    "api_token_file", option(None, "file holding the API token, e.g. a mounted Secret", "--api-token-file")
)
REDIS_ENV = tuple(
    _option(f"redis_{v[6:].lower()}", option(None, "", v))
    for v in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")
)
SERVE_OPTIONS = (*_options(Settings), TOKEN_FILE, *DOWNLOAD_SETTINGS_OPTIONS)
# `outrider download` spells the worker count --workers too, and it logs like `serve`.
DOWNLOAD_OPTIONS = tuple(
    o._replace(flags=("--workers", *o.flags)) if o.field == "workers" else o
    for o in SERVE_OPTIONS
    if o in DOWNLOAD_SETTINGS_OPTIONS or o.field in ("log_level", "log_format")
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
    return ",".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)


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


def _build(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """`cls(**values)`, or a SettingsError that names the flag (or variable) of the first value refused."""
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        o = next(o for o in SERVE_OPTIONS if error["loc"][0] in (o.field, *o.env))
        text = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            text = f"required (also read from {', '.join(o.env)})"
        elif error["type"] != "value_error":  # pydantic's own messages do not show the value; ours do
            text += f", got {error['input']!r}"
        raise SettingsError(f"{o.flags[-1]}: {text}") from None


def _downloads(raw: dict[str, Any], source_defaults: SourceOptions) -> DownloadSettings:
    """DownloadSettings from the download options in `raw` (taken out of it)."""
    given = {o.field: raw.pop(o.field) for o in DOWNLOAD_SETTINGS_OPTIONS if o.field in raw}
    downloads: DownloadSettings = _build(DownloadSettings, {**given, "source_defaults": source_defaults})
    return downloads


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
    downloads = _downloads(raw, _pod_store(environ))
    settings: Settings = _build(
        Settings,
        {
            "pod": socket.gethostname(),
            **raw,
            "api_token": token or None,
            "downloads": downloads,
            "engine_environment": engine_environment(environ),
        },
    )
    if "metrics_max_age" not in raw:
        settings = dataclasses.replace(settings, metrics_max_age=3 * settings.scrape_interval)
    return settings


@dataclass(frozen=True)
class _Logging:
    log_level: LogLevel = "warning"  # `outrider download` logs warnings and up unless told otherwise
    log_format: LogFormat | None = None


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    source_opener: SourceOpener | None = None,
) -> int:
    """Run a command; `source_opener` replaces the built-in stores (tests use it to serve a local one)."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "serve":
            settings = serve_settings(args, env)
        else:
            raw, pod_store = resolve(args, DOWNLOAD_OPTIONS, env), _pod_store(env)
            logging: _Logging = _build(_Logging, {k: raw.pop(k) for k in ("log_level", "log_format") if k in raw})
            logs.configure(logging.log_level, logging.log_format)  # as `serve` logs; the progress display is apart
            logs.REDACTOR.register(logs.secrets_in(pod_store), pinned=True)
            downloads = _downloads(raw, pod_store)
    except SettingsError as exc:
        print(f"outrider: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "download":
        return download_cmd.main(args, downloads, source_opener)
    from outrider.service import run  # imported late: `--help` should not pay for the server stack

    return run(settings, source_opener=source_opener)
