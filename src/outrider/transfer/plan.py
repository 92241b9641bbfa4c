"""What to fetch: the source's listing narrowed by the request's filters.

Filters apply in this order: the suffix allow-list (AIBrix's DOWNLOADER_ALLOW_FILE_SUFFIX: `json, safetensors`),
then include globs (a file must match one, when any are given), then exclude globs (a file matching one is dropped).
Globs match the whole '/'-separated path with fnmatch rules, and a pattern without '/' also matches the file name,
so `*.safetensors` selects shards in subdirectories too. An empty result is an error naming the filter that emptied
it: downloading nothing and calling it done is how a wrong prefix goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

from outrider.errors import InvalidRequest, SourceNotFound
from outrider.sources.base import RemoteFile, Source


@dataclasses.dataclass(frozen=True)
class Filters:
    suffixes: tuple[str, ...] = ()  # lower-case, no leading dot; empty = every file
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def _glob_match(path: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(path, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def _has_suffix(path: str, suffixes: Sequence[str]) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return any(name.endswith("." + s) for s in suffixes)


def select(files: Sequence[RemoteFile], filters: Filters, source_display: str) -> list[RemoteFile]:
    """The files the filters keep, sorted by path; raises when nothing is left."""
    if not files:
        raise SourceNotFound(f"no files found at {source_display}")
    kept = list(files)
    if filters.suffixes:
        kept = [f for f in kept if _has_suffix(f.path, filters.suffixes)]
        if not kept:
            raise InvalidRequest(
                f"no file at {source_display} ends in an allowed suffix ({', '.join(filters.suffixes)})",
                field="allow_file_suffix",
            )
    if filters.include:
        kept = [f for f in kept if any(_glob_match(f.path, p) for p in filters.include)]
        if not kept:
            raise InvalidRequest(
                f"include {list(filters.include)} matches no file at {source_display}", field="include"
            )
    if filters.exclude:
        kept = [f for f in kept if not any(_glob_match(f.path, p) for p in filters.exclude)]
        if not kept:
            raise InvalidRequest(f"exclude {list(filters.exclude)} leaves no file at {source_display}", field="exclude")
    return sorted(kept, key=lambda f: f.path)


def plan(source: Source, filters: Filters) -> list[RemoteFile]:
    """List the source (blocking: call from a worker thread) and apply the filters."""
    return select(source.list_files(), filters, source.display)
