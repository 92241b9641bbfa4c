"""Logging: one event per line, JSON or text, with the request id and secrets redacted.

`configure` installs the one handler on the root logger. Every event then passes:
- `RequestIdFilter`, which stamps it with the id of the request being served (`request_id`, a contextvar set by
  the request middleware in http/observe.py; trio copies it into the tasks and threads a request starts);
- a formatter: `JsonFormatter` (time in ISO 8601 UTC, level, logger, message, request_id, any `extra=` fields,
  and `exc_info` as one string) or `TextFormatter` (the same in a line a person reads);
- `Redactor`, defense in depth: the code never logs a credential on purpose, but a library's message, an
  exception text or a repr can carry one. Known secret values (those `secrets_in` finds in the settings, and the
  ones each request's `config` brings, registered when it is parsed) and obvious patterns (`Authorization: Bearer
  ...`, `X-Amz-Signature=...`, `secret_key=...`) are replaced with `***`.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import datetime
import json
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from pydantic import SecretStr

MASK = "***"
# The id of the request whose handling is logging; None outside a request. Set by http/observe.py.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("outrider_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# Libraries that log every request (or worse, every header and signature) at DEBUG: kept at INFO even when
# outrider runs at DEBUG, so a debug session does not drown in them (redaction covers what they log anyway).
_CHATTY = ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3", "hpack", "filelock", "huggingface_hub")

# Secret-looking shapes, whatever their value. Each keeps its first group (the name) and masks the rest.
_PATTERNS = (
    # An Authorization header or a bearer token anywhere: `Authorization: Bearer x`, `'authorization': 'AWS4...'`.
    re.compile(r"""(?i)(\bauthorization['"]?\s*[:=]\s*['"]?)[^'"\r\n,}]+"""),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    # Presigned URLs and signed query strings (S3 v2/v4, OBS, TOS).
    re.compile(
        r"(?i)(\b(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-tos-signature|x-tos-credential"
        r"|x-tos-security-token|signature|awsaccesskeyid|accesskeyid)=)[^&\s'\"]+"
    ),
    # Credential-named keys in key=value, key: value, Python reprs and JSON.
    re.compile(
        r"""(?i)(\b(?:secret_key|access_key|secret_access_key|access_key_id|session_token|security_token|hf_token|ms_token"""
        r"""|api_key|api_token|token|password)['"]?\s*[:=]\s*['"]?)[^'"\s,;&}]+"""
    ),
)
# Values shorter than this are not registered: masking every occurrence of a 3-letter string would mangle logs,
# and no real credential is that short.
MIN_SECRET_LENGTH = 6


class Redactor:
    """Known secret values and secret-shaped patterns, replaced with `***`.

    The registry is bounded: values from the settings stay for the process's life; values from requests are kept
    most-recent-first up to `max_request_values` (a flood of requests cannot grow it without bound; a value
    evicted long after its request is unlikely to be logged again, and the patterns still apply)."""

    def __init__(self, max_request_values: int = 256) -> None:
        self._lock = threading.Lock()  # registration happens in worker threads too (request parsing)
        self._pinned: set[str] = set()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._max = max_request_values
        self._regex: re.Pattern[str] | None = None

    def register(self, values: Iterable[object], *, pinned: bool = False) -> None:
        """Remember secret values (non-strings and short strings are ignored)."""
        with self._lock:
            changed = False
            for value in values:
                if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_LENGTH:
                    continue
                for form in _forms(value.strip()):
                    if pinned:
                        changed |= form not in self._pinned
                        self._pinned.add(form)
                    elif form in self._pinned:
                        continue
                    elif form in self._recent:
                        self._recent.move_to_end(form)
                    else:
                        self._recent[form] = None
                        changed = True
                        while len(self._recent) > self._max:
                            self._recent.popitem(last=False)
            if changed:
                self._regex = None

    def clear(self) -> None:
        with self._lock:
            self._pinned.clear()
            self._recent.clear()
            self._regex = None

    def redact(self, text: str) -> str:
        regex = self._regex
        if regex is None:
            regex = self._compile()
        if regex is not None:
            text = regex.sub(MASK, text)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def _compile(self) -> re.Pattern[str] | None:
        with self._lock:
            values = sorted(self._pinned | set(self._recent), key=len, reverse=True)  # longest first
            regex = re.compile("|".join(map(re.escape, values))) if values else None
            self._regex = regex
            return regex


def _forms(value: str) -> tuple[str, ...]:
    """A value as it may appear in text: as is, URL-quoted (in a query string) and JSON-escaped."""
    quoted = urllib.parse.quote(value, safe="")
    escaped = json.dumps(value)[1:-1]
    return tuple(dict.fromkeys((value, quoted, escaped)))


REDACTOR = Redactor()


def register_secrets(*values: object) -> None:
    """Register credentials a request brought (e.g. its `config`'s keys) with the process's redactor."""
    REDACTOR.register(values)


def redact(text: str) -> str:
    return REDACTOR.redact(text)


def secrets_in(value: object) -> Iterator[str]:
    """Every secret `value` holds, found by type: each `SecretStr` in it, and each string a dataclass keeps out of
    its repr (`field(repr=False)`: the store options' credentials). Dataclasses, lists and tuples are searched.

    A secret URL (Redis's) yields its password, as written and decoded, rather than the whole URL: the host and
    database stay readable in a log line."""
    if isinstance(value, SecretStr):
        text = value.get_secret_value()
        if "://" not in text:
            yield text
        elif password := urllib.parse.urlsplit(text).password:
            yield from (password, urllib.parse.unquote(password))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if isinstance(item, str) and not field.repr:
                yield item
            else:
                yield from secrets_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secrets_in(item)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k != "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (when serving one), extra fields,
    exc_info/stack_info as strings. Every string value is redacted."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            event["request_id"] = rid
        for key, value in _extras(record).items():
            event.setdefault(key, value)
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exc_info"] = record.exc_text
        if record.stack_info:
            event["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(self._clean(event), default=str, ensure_ascii=False)

    def _clean(self, value: Any) -> Any:
        # Redact strings field by field, before JSON escaping could hide a pattern's quotes.
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {str(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redactor.redact(str(value))


class TextFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.123Z INFO outrider.x [request-id] message key=value ...`, then any traceback; the
    whole event is redacted. A traceback spans lines (text is for people at a terminal; JSON keeps one line)."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        parts = [f"{when}.{int(record.msecs):03d}Z", record.levelname, record.name]
        rid = getattr(record, "request_id", None)
        if rid is not None:
            parts.append(f"[{rid}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in _extras(record).items())
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return self.redactor.redact(text)


def default_format(stream: TextIO) -> str:
    """Text for a person at a terminal, JSON for a log collector (a pod's stderr is not a terminal)."""
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(level: str, fmt: str | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send every log event to `stream` (default stderr) in `fmt` at `level` and above; returns the handler.

    Replaces whatever handlers the root logger had, so calling it again reconfigures rather than duplicates."""
    out = stream if stream is not None else sys.stderr
    chosen = fmt or default_format(out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine scrape otherwise
    logging.getLogger("hypercorn.access").disabled = True  # outrider's own access log (http/observe.py) replaces it
    return handler
