"""The seam between a request's `source` string (+ its `config`) and a `Source`.

The transfer engine and the HTTP routes never parse URIs or credentials themselves: they call a `SourceOpener`.
The service builds one with `build_opener(settings.downloads)` unless a caller (a test) passes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from outrider.sources import open_source, parse_source, resolve_options
from outrider.sources.base import Source
from outrider.transfer.settings import DownloadSettings

#: Turn a request's `source` (s3://, obs://, tos://, pvc://, hf://, org/name, ...) and its `config` (credentials,
#: endpoint, revision; None when absent) into a Source. Blocking (it may build SDK clients): called from a thread.
#: Raises InvalidSource for a malformed source or config, SourceAccessDenied for what this pod may not read.
SourceOpener = Callable[[str, Mapping[str, object] | None], Source]


def build_opener(settings: DownloadSettings) -> SourceOpener:
    """The production opener: parse the source, settle its options (the request's config over the pod's env,
    never the pod's credentials to a request's endpoint unless allowed), and open the store."""

    def opener(source: str, config: Mapping[str, object] | None) -> Source:
        ref = parse_source(source)
        options = resolve_options(
            ref, config, settings.source_defaults, allow_request_endpoints=settings.allow_request_endpoints
        )
        return open_source(ref, options, pvc_root=settings.pvc_root, max_workers=settings.workers)

    return opener
