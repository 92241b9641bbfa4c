"""Reading a JSON request body into a dict, with a 400 (never a 500) for anything else."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import pydantic
from quart import request
from quart_schema import RequestSchemaValidationError

from outrider.errors import InvalidRequest

M = TypeVar("M", bound=pydantic.BaseModel)
# Longest string field a compatible route takes (a URI or a path; the native models say the same).
MAX_STRING = 4096
# Parts of a pydantic error location that name a union member rather than a field: `str`, `list[str]`,
# `constrained-str`, `function-after[...]`, a model's class name.
_NOT_A_FIELD = re.compile(r"^(?:[A-Z].*|.*[\[\-].*|str|int|bool|float|list|dict|none|bytes)$")


async def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object. An empty body is `{}` when `optional`, else a 400."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("request body must be a JSON object", field="body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON", field="body") from None
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


def bool_field(body: dict[str, Any], field: str, default: bool = False) -> bool:
    value = body.get(field, default)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be a boolean", field=field)
    return value


def config_field(body: dict[str, Any], field: str = "config") -> dict[str, object] | None:
    """A config given as a JSON object, or as a JSON string holding one (the Kthena runtime's form)."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest(f"{field} is a string but not a JSON object", field=field) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object (or a JSON string holding one)", field=field)
    return value
