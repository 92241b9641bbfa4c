"""Adapter names, the directories they map to, and how sources are shown.

A name is the model id the engine serves the adapter under, so any name vLLM takes is taken (`team/sql`,
`sql:v2`): at most 128 characters, none of them a control character, not blank. It is never used as a path as it
stands: `directory_name` maps it to one directory name, the same name for the names that are already safe ones
(letters, digits, `.`, `_`, `-`, not starting with `.`) and an escaped one for the rest, so no name can lead out
of the adapter root or onto another name's directory.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

from outrider.errors import InvalidRequest

MAX_NAME = 128
# What `validate_name` takes, as a JSON Schema pattern for the spec: no control characters (C0, DEL, C1), and
# something besides white space.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# AIBrix's own rule for the names its delegation mode writes a directory for; outrider keeps it on those routes.
AIBRIX_DELEGATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Longest directory name written: file systems take 255 bytes; an escaped name can be three times its length.
_MAX_DIR = 200


def validate_name(name: object, field: str = "lora_name") -> str:
    """The name if it is usable as an adapter name, else InvalidRequest (400) naming `field`."""
    if not isinstance(name, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    if not name.strip():
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"{field} is longer than {MAX_NAME} characters", field=field)
    if _CONTROL.search(name):
        raise InvalidRequest(f"{field} must not contain control characters", field=field)
    return name


def directory_name(name: str) -> str:
    """The one directory name adapter `name` is downloaded into: the name itself when it is a safe file name,
    else the name percent-escaped (`team/sql` -> `team%2Fsql`, `.x` -> `%2Ex`). Escaping is one-to-one and a safe
    name holds no `%`, so two names never share a directory; one too long for a file system is cut and given the
    SHA-256 of the whole name, so names alike in the part kept still differ."""
    escaped = urllib.parse.quote(name, safe="")
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    if len(escaped) > _MAX_DIR:
        escaped = f"{escaped[: _MAX_DIR - 66]}~~{hashlib.sha256(name.encode()).hexdigest()}"
    return escaped


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
