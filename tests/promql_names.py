"""The metric names a PromQL expression reads, found by a small tokenizer (for checking dashboards and rules).

Not a parser: it only has to tell metric names from everything else that looks like an identifier. Skipped:
function names (an identifier followed by `(`), aggregation operators and keywords (`sum`, `by`, `on`, `bool`,
`offset`, ...), the label lists after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, everything inside
`{...}` (label matchers and their strings), everything inside `[...]` (ranges, subquery steps, `$__rate_interval`),
string literals, numbers and durations, and Grafana's template variables (`$x`, `${x}`, `[[x]]`).
A selector written as `{__name__="x"}` names `x` too.
"""

from __future__ import annotations

import re

# Operators that take a grouping clause or parameters, and keywords that are never metric names.
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = AGGREGATIONS | GROUPING | frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|[0-9][0-9A-Za-z_.]*|\.[0-9][0-9A-Za-z_.]*")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z0-9_]+|\[\[[^\]]*\]\]")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(["'`])([A-Za-z_:][A-Za-z0-9_:]*)\1""")


class PromQLSyntaxError(ValueError):
    """The expression is not balanced PromQL (an unclosed bracket, brace, or string)."""


def _skip_string(expr: str, i: int) -> int:
    """Index just past the string literal starting at `expr[i]`."""
    quote = expr[i]
    i += 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    raise PromQLSyntaxError(f"unterminated string in {expr!r}")


def _skip_block(expr: str, i: int, close: str) -> tuple[int, str]:
    """Index just past the `{...}` or `[...]` block opening at `expr[i]`, and its content (strings skipped whole)."""
    start = i + 1
    i = start
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c == close:
            return i + 1, expr[start:i]
        i += 1
    raise PromQLSyntaxError(f"unclosed {expr[start - 1]!r} in {expr!r}")


def _next_significant(expr: str, i: int) -> str:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return expr[i] if i < len(expr) else ""


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    names: set[str] = set()
    i = 0
    skip_label_list = False  # the next `( ... )` is a grouping label list
    depth = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # a comment runs to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "$" or expr.startswith("[[", i):
            m = _VARIABLE.match(expr, i)
            if m is None:
                raise PromQLSyntaxError(f"bad template variable at {i} in {expr!r}")
            i = m.end()
        elif c == "{":
            i, body = _skip_block(expr, i, "}")
            names.update(m.group(2) for m in _NAME_MATCHER.finditer(body))
        elif c == "[":
            i, _ = _skip_block(expr, i, "]")
        elif c == "(":
            if skip_label_list:
                end = expr.find(")", i)
                if end < 0:
                    raise PromQLSyntaxError(f"unclosed label list in {expr!r}")
                i = end + 1
                skip_label_list = False
            else:
                depth += 1
                i += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise PromQLSyntaxError(f"unbalanced ')' in {expr!r}")
            i += 1
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            m = _NUMBER.match(expr, i)
            assert m is not None
            i = m.end()
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            assert m is not None
            word = m.group(0)
            i = m.end()
            if word.lower() in GROUPING:
                skip_label_list = _next_significant(expr, i) == "("
            elif word.lower() in KEYWORDS:
                pass
            elif _next_significant(expr, i) == "(":
                pass  # a function call
            else:
                names.add(word)
        else:
            i += 1  # an operator or a comma
    if depth != 0:
        raise PromQLSyntaxError(f"unbalanced '(' in {expr!r}")
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?P<args>.*)\)\s*$", re.S)


def grafana_query_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query: `label_values(selector, label)` or a PromQL expression.

    The trailing `label` of `label_values` is a label name, not a metric, so it is cut off before tokenizing."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        return metric_names(query)
    args = m.group("args")
    head, sep, tail = args.rpartition(",")
    if sep and re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*", tail):
        return metric_names(head)
    return set()  # label_values(label): no metric named
