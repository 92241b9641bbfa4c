"""http/body.py's depth limit: the scan that refuses a deeply nested body before anything recurses over it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest

from outrider.errors import InvalidRequest
from outrider.http.body import _JSON_STRING, MAX_JSON_DEPTH, config_field, json_depth, parse_json

_DECODER = json.JSONDecoder()


def _arrays(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


def _objects(depth: int) -> str:
    return '{"k": ' * depth + "1" + "}" * depth


def _mixed(depth: int) -> str:
    """Objects and arrays alternating, with strings full of brackets and escaped quotes beside each level."""
    opens = "".join('{"a\\"[{": "]}\\\\", "k": ' if i % 2 == 0 else '["[[", ' for i in range(depth))
    closes = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return opens + "0" + closes


@pytest.mark.parametrize("shape", [_arrays, _objects, _mixed])
def test_depth_counts_each_level_and_nothing_in_strings(shape: Callable[[int], str]) -> None:
    for depth in (0, 1, 2, 7, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1):
        text = shape(depth)
        assert json_depth(text) == depth, text
        # What the scan counts is what the parser builds.
        value, seen = json.loads(text), 0
        while isinstance(value, list | dict):
            value = value[-1] if isinstance(value, list) else value["k"]
            seen += 1
        assert seen == depth


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('"[[[["', 0),
        ('["\\\\", [1]]', 2),  # an escaped backslash ends before the quote: the string closes there
        ('["\\"]", [1]]', 2),  # an escaped quote does not close the string
        ("[[]][[[]]]", 3),  # depth is the deepest point, not the count of brackets
        ('["unclosed [[[[', 1),  # a string running to the end hides what follows it
        ('"\\', 0),  # a lone backslash at the very end
        ("]]]", 0),
    ],
)
def test_depth_of_odd_texts(text: str, depth: int) -> None:
    assert json_depth(text) == depth


@pytest.mark.parametrize("shape", [_arrays, _objects, _mixed])
def test_parse_json_takes_the_limit_and_refuses_one_more(shape: Callable[[int], str]) -> None:
    assert parse_json(shape(MAX_JSON_DEPTH).encode(), "body", "request body") == json.loads(shape(MAX_JSON_DEPTH))
    with pytest.raises(InvalidRequest, match=f"nests deeper than {MAX_JSON_DEPTH} levels") as refused:
        parse_json(shape(MAX_JSON_DEPTH + 1).encode(), "body", "request body")
    assert refused.value.field == "body" and refused.value.status == 400


def test_parse_json_refuses_a_depth_past_the_recursion_limit() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_json(_arrays(100_000).encode(), "body", "request body")
    assert refused.value.field == "body"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32"])
def test_parse_json_reads_what_json_loads_reads(encoding: str) -> None:
    # U+225B and U+5B22 are a `[` byte beside a `"` byte in UTF-16: the scan must read characters, not bytes.
    text = '{"k": ["\u225b\u5b22", ' + _arrays(3) + "]}"
    assert parse_json(text.encode(encoding), "body", "request body") == json.loads(text)


def test_parse_json_names_the_field_of_invalid_json() -> None:
    for raw in (b"{", b"\xff\xfe\xff", b'{"a": 1,}'):
        with pytest.raises(InvalidRequest, match="request body is not valid JSON") as refused:
            parse_json(raw, "body", "request body")
        assert refused.value.field == "body"


def test_a_config_string_is_held_to_the_same_limit() -> None:
    at_limit = {"config": _objects(MAX_JSON_DEPTH)}
    assert config_field(at_limit) == json.loads(_objects(MAX_JSON_DEPTH))
    for text in (_objects(MAX_JSON_DEPTH + 1), "{" + '"a": ' + _arrays(100_000) + "}"):
        with pytest.raises(InvalidRequest, match="nests deeper") as refused:
            config_field({"download_extra_config": text}, "download_extra_config")
        assert refused.value.field == "download_extra_config"


def test_the_string_pattern_never_fails_where_a_quote_starts() -> None:
    """The scan stays linear only if the string pattern, tried at a `"`, always matches: a pattern that can fail
    there (an unclosed string, a trailing backslash) is retried from every later quote, quadratic on a body like
    `"\\"\\"\\"...`. Every text of up to 7 quotes, backslashes, brackets and letters is tried, at every quote."""
    for length in range(1, 8):
        for chars in itertools.product('"\\[a', repeat=length):
            text = "".join(chars)
            for start in (i for i, c in enumerate(text) if c == '"'):
                found = _JSON_STRING.match(text, start)
                assert found is not None, (text, start)
                # ... and where the parser reads a whole string, the pattern ends where the parser does.
                try:
                    _, end = _DECODER.raw_decode(text, start)
                except ValueError:
                    continue
                assert found.end() == end, (text, start)
