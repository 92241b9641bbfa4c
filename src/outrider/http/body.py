"""Reading a JSON request body into a dict, with a 400 (never a 500) for anything else."""

from __future__ import annotations

import json
import logging
import re
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, TypeVar

import pydantic
from quart import request
from quart_schema import RequestSchemaValidationError

from outrider.errors import InvalidRequest

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pydantic.BaseModel)
# Longest string field a compatible route takes (a URI or a path; the native models say the same).
MAX_STRING = 4096
# Parts of a pydantic error location that name a union member rather than a field: `str`, `list[str]`,
# `constrained-str`, `function-after[...]`, a model's class name.
_NOT_A_FIELD = re.compile(r"^(?:[A-Z].*|.*[\[\-].*|str|int|bool|float|list|dict|none|bytes)$")
# Deepest nesting of arrays and objects a body (or a `config` given as a JSON string) may have; the top-level
# object is level 1. Real bodies nest 3 or 4 levels. json.loads and pydantic both recurse once per level, so a
# body nested past Python's recursion limit (a 200 kB `[[[...]]]`) raised RecursionError, a 500 with a logged
# traceback; 64 is far above any real body and far below that limit, whatever the stack already holds.
MAX_JSON_DEPTH = 64
# A JSON string, closed or running to the end of the text. Possessive, and matching wherever a `"` starts, so
# no input makes it backtrack or retry: one pass over the text, however its quotes and backslashes fall.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.|\\\Z)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
# An opening bracket as +1, a closing one as -1 (0xff read as a signed byte).
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(text: str) -> int:
    """How deeply `text`'s arrays and objects nest (0 for a scalar), counting brackets outside strings.

    A scan rather than a parse, so that nothing recurses: strings are dropped, the brackets left become +1/-1
    steps, and the deepest point is the largest running sum, all in C loops (under 0.1 s for the largest body).
    For text that is not JSON the count may be off, but the parser then refuses it before it could nest deeper."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    steps = array("b", brackets.encode("ascii").translate(_BRACKET_STEP))
    return max(accumulate(steps, initial=0))


def parse_json(text: str | bytes, field: str, what: str) -> Any:
    """`text` parsed as JSON; invalid JSON, or nesting past MAX_JSON_DEPTH, is a 400 naming `field`.

    Every request body, and every JSON string inside one, is parsed here: never by json.loads directly."""
    try:
        # What json.loads does with bytes (UTF-8, -16 or -32, told by the first bytes), done first so that the
        # depth scan reads characters: a UTF-16 character's bytes can look like a quote or a bracket.
        if isinstance(text, bytes):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what} is not valid JSON", field=field) from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{what} nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects", field=field)
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequest(f"{what} is not valid JSON", field=field) from None


async def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object. An empty body is `{}` when `optional`, else a 400."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("request body must be a JSON object", field="body")
    body = parse_json(raw, "body", "request body")
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", field="body")
    return body


async def strict_body(model: type[M], *, optional: bool = False) -> M:
    """The body as a native route's model: unknown fields, wrong types (no coercion) and over-long strings raise
    RequestSchemaValidationError, which app.py answers with a 400 naming the field."""
    body = await json_object(optional=optional)
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise RequestSchemaValidationError(exc) from None


def error_field(loc: Sequence[int | str]) -> str:
    """A pydantic error location as the dotted field it blames (`config.endpoint`, `include.0`), or `body`."""
    parts = [str(part) for part in loc if isinstance(part, int) or not _NOT_A_FIELD.match(part)]
    return ".".join(parts) or "body"


def string_field(body: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    """A string field; absent, null and "" all count as not given (the peers' clients send "" for unset)."""
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"Missing required parameter: {field}", field=field)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    if len(value) > MAX_STRING:
        raise InvalidRequest(f"{field} is longer than {MAX_STRING} characters", field=field)
    return value


def required_string(body: dict[str, Any], field: str) -> str:
    value = string_field(body, field)
    assert value is not None  # string_field raises for a missing required field
    return value


# The spellings of a boolean pydantic takes (the peers' models are pydantic ones), any case.
_TRUE = frozenset(("true", "1", "yes", "on", "t", "y"))
_FALSE = frozenset(("false", "0", "no", "off", "f", "n"))


def bool_field(body: dict[str, Any], field: str, default: bool = False, *, blank_is_unset: bool = True) -> bool:
    """A boolean as the peers take one: true/false, 1/0, or a word pydantic reads as one ("true", "yes", "off").
    null is unset, and so is "" where `blank_is_unset` (the peers' clients send it for unset; a query's `?wait=`
    is a typo)."""
    value = body.get(field)
    if value is None or (value == "" and blank_is_unset):
        return default
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value == 1
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be a boolean (true or false)", field=field)
    return value


def workers_field(body: dict[str, Any], field: str, top: int) -> int | None:
    """A worker count as the peers take one (a number, or its digits: "8"); one outside 1..`top` is clamped into
    it, and the clamp logged: the Kthena runtime runs with whatever it is given, so refusing would break its
    callers, and no count outside the range means anything else. null or "" is unset."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,9}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{field} must be a whole number", field=field)
    clamped = min(max(value, 1), top)
    if clamped != value:
        log.warning("%s %d is outside 1..%d: using %d", field, value, top, clamped)
    return clamped


def config_field(body: dict[str, Any], field: str = "config") -> dict[str, object] | None:
    """A config given as a JSON object, or as a JSON string holding one (the Kthena runtime's form)."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = parse_json(value, field, f"{field} (a JSON string)")
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object (or a JSON string holding one)", field=field)
    return value
