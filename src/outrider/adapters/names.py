"""Adapter names and how sources are shown.

A name becomes a directory under the adapter root and a model id at the engine, so it is kept to a safe,
portable alphabet: no path separators, no `..`, no spaces or control characters, at most 128 characters.
"""

from __future__ import annotations

import re
import urllib.parse

from outrider.errors import InvalidRequest

MAX_NAME = 128
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$")


def validate_name(name: object, field: str = "lora_name") -> str:
    """The name if it is usable as an adapter name, else InvalidRequest (400) naming `field`."""
    if not isinstance(name, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    if not name:
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"{field} is longer than {MAX_NAME} characters", field=field)
    if "/" in name or "\\" in name:
        raise InvalidRequest(f"{field} must not contain a path separator", field=field)
    if not _NAME_RE.match(name):
        raise InvalidRequest(
            f"{field} may hold only letters, digits, '.', '_' and '-', and must start with a letter, digit or '_'",
            field=field,
        )
    return name


def display_source(source: str) -> str:
    """The source with any user:password@ part removed: safe for logs, errors and records."""
    if "://" not in source:
        return source
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return source.split("://", 1)[0] + "://<unparseable>"
    if "@" not in parts.netloc:
        return source
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
