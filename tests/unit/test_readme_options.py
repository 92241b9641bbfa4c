"""README.md's flag table ("Running it") against the settings model: the same flags, variables and defaults."""

from __future__ import annotations

import re

import pytest
from pydantic_core import PydanticUndefined

from outrider.cli import REDIS_ENV, SERVE_OPTIONS, Option, shown_default
from tests.conftest import REPO

BY_FLAG = {flag: o for o in SERVE_OPTIONS for flag in o.flags}
# Defaults the command line derives rather than takes from the field (the field's own default is for code).
DERIVED = {"pod": "hostname", "metrics_max_age": "3 scrape intervals", "verify_checksums": "checksum"}


def quoted(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def table() -> list[tuple[list[Option], str, str]]:
    """Each row as (the options its flags name, its variables cell, its default cell)."""
    section = (REPO / "README.md").read_text().split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            flags, env, default = line.strip().strip("|").split(" | ")
            options = [BY_FLAG[f] for text in quoted(flags) for f in text.split("/")]
            rows.append((list(dict.fromkeys(options)), env, default))
    return rows


def test_the_table_lists_every_flag_and_no_other() -> None:
    listed = {f for row in table() for o in row[0] for f in o.flags}
    assert listed == set(BY_FLAG)
    rows = (REPO / "README.md").read_text().split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    for o in SERVE_OPTIONS:
        assert "/".join(o.flags) in rows, f"{o.flags} should be written together, short flag first"


@pytest.mark.parametrize(("options", "env", "default"), table(), ids=lambda v: getattr(v, "field", None))
def test_each_row_names_its_variables_and_defaults(options: list[Option], env: str, default: str) -> None:
    written = set()
    for name in quoted(env):
        matches = {v for o in options for v in o.env if v.startswith(name[:-1])} if name.endswith("*") else {name}
        assert matches, f"{name} matches no variable of {[o.field for o in options]}"
        written |= matches
    redis = {v for o in REDIS_ENV for v in o.env} if any(o.field == "redis_url" for o in options) else set()
    assert written == {v for o in options for v in o.env} | redis
    for o in options:
        if o.info.default is PydanticUndefined:
            assert "required" in default, o.field
        elif o.info.default is False:
            assert "off" in default, o.field
        elif o.field in DERIVED:
            assert DERIVED[o.field] in default, o.field
        elif (shown := shown_default(o.info)) is not None:  # as `--help` shows it
            assert shown in quoted(default), (o.field, shown, default)
