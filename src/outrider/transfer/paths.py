"""Confining request destinations to the model root, before anything is written.

A destination is refused (InvalidRequest naming the field) when any spelling could leave the root: a `..` part
(also percent-encoded), an absolute path elsewhere, a NUL byte, or a symlink anywhere along the existing part of
the path that resolves outside the root. The root itself is refused too: a download needs a directory of its own.
Concurrent symlink swaps inside the root are out of scope: outrider is the only writer under it.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from outrider.errors import InvalidRequest, InvalidSource


def confine(root: str | Path, raw: str, field: str) -> Path:
    """The absolute destination for `raw` (relative to `root`, or absolute under it), or InvalidRequest."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequest(f"{field} must be a non-empty path", field=field)
    if "\x00" in raw:
        raise InvalidRequest(f"{field} must not contain a NUL byte", field=field)
    for spelling in {raw, urllib.parse.unquote(raw)}:
        if ".." in spelling.replace("\\", "/").split("/"):
            raise InvalidRequest(f"{field} must not contain '..': {raw!r}", field=field)
    real_root = Path(os.path.realpath(root))
    candidate = Path(raw) if raw.startswith("/") else Path(root) / raw
    # realpath resolves every symlink in the part that exists; what does not exist yet cannot point anywhere.
    try:
        resolved = Path(os.path.realpath(candidate))
        is_file = resolved.exists() and not resolved.is_dir()
    except OSError as exc:  # a name too long for the file system, say
        raise InvalidRequest(f"{field} is not a usable path: {exc.strerror}", field=field) from None
    if resolved == real_root or real_root not in resolved.parents:
        raise InvalidRequest(f"{field} must be a directory under the model root {str(root)!r}: {raw!r}", field=field)
    if is_file:
        raise InvalidRequest(f"{field} names an existing file, not a directory: {raw!r}", field=field)
    return resolved


def join_under(dest: Path, relative: str) -> Path:
    """`dest / relative` for a source's file path; refuses paths that would leave `dest` (a store's bad listing)."""
    parts = relative.split("/")
    if any(p in ("..", ".", "") for p in parts) or "\x00" in relative:
        raise InvalidSource(f"the source lists a file with an unsafe path: {relative!r}")
    return dest.joinpath(*parts)
