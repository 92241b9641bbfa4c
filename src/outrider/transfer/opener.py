"""The seam between a request's `source` string (+ its `config`) and a `Source`.

The transfer engine and the HTTP routes never parse URIs or credentials themselves: they call a `SourceOpener`.
The service builds one with `build_opener(settings.downloads)` unless a caller (a test) passes its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from outrider.errors import InvalidSource
from outrider.settings import DownloadSettings
from outrider.sources.base import Source

#: Turn a request's `source` (s3://, obs://, tos://, pvc://, hf://, org/name, ...) and its `config` (credentials,
#: endpoint, revision; None when absent) into a Source. Blocking (it may build SDK clients): called from a thread.
#: Raises InvalidSource for a malformed source or config, SourceAccessDenied for what this pod may not read.
SourceOpener = Callable[[str, Mapping[str, object] | None], Source]


def build_opener(settings: DownloadSettings) -> SourceOpener:
    """The production opener: `outrider.sources.open_source` when the stores are built in, else InvalidSource.

    `settings` carries what the stores need from the operator (pvc_root, allow_request_endpoints)."""

    def open_source(source: str, config: Mapping[str, object] | None) -> Source:
        # Looked up by name so this module does not depend on which stores a build has.
        # TODO(lead): call outrider.sources.open_source directly, passing `settings` as its signature wants.
        opener = getattr(importlib.import_module("outrider.sources"), "open_source", None)
        if opener is None:
            raise InvalidSource("no object store support is built into this outrider", field="source")
        result: Source = opener(source, config)
        return result

    return open_source
