"""Object stores and volumes behind one interface (`sources.base.Source`).

The rest of outrider calls `open_source` and never imports a store module: it parses the source, picks the store
and builds it. Credentials and endpoints come in as `SourceOptions`, already resolved by
`sources.options.resolve_options` (request config over the pod's env, under the endpoint rule).
"""

from __future__ import annotations

import os

from outrider.sources.base import PIECE_SIZE, Checksum, RemoteFile, Source
from outrider.sources.options import SourceOptions, env_defaults, parse_config, resolve_options
from outrider.sources.uri import BucketRef, HubRef, ModelScopeRef, SourceRef, VolumeRef, parse_source

__all__ = [
    "PIECE_SIZE",
    "BucketRef",
    "Checksum",
    "HubRef",
    "RemoteFile",
    "Source",
    "SourceOptions",
    "SourceRef",
    "VolumeRef",
    "env_defaults",
    "open_source",
    "parse_config",
    "parse_source",
    "resolve_options",
]


def open_source(
    uri_or_ref: str | SourceRef,
    options: SourceOptions,
    *,
    pvc_root: str | os.PathLike[str] | None,
    max_workers: int,
) -> Source:
    """Build the Source for a source string or parsed reference.

    Blocking (it builds SDK clients, which reads files and takes tens of milliseconds): call it from a worker
    thread. It contacts no store; the first call to `list_files` does. Raises InvalidSource for a malformed
    source or missing store settings (endpoint, region), SourceAccessDenied for a local path outside `pvc_root`.
    `max_workers` sizes the connection pool to the number of threads that will read at once.
    """
    ref = parse_source(uri_or_ref) if isinstance(uri_or_ref, str) else uri_or_ref
    if isinstance(ref, VolumeRef):
        from outrider.sources.local import LocalSource

        return LocalSource(ref, pvc_root=pvc_root)
    if isinstance(ref, ModelScopeRef):
        from outrider.sources.modelscope import ModelScopeSource

        return ModelScopeSource(ref, options, max_workers=max_workers)
    if isinstance(ref, HubRef):
        from outrider.sources.huggingface import HuggingFaceSource

        return HuggingFaceSource(ref, options, max_workers=max_workers)
    if ref.scheme == "s3":
        from outrider.sources.s3 import S3Source

        return S3Source(ref, options, max_workers=max_workers)
    if ref.scheme == "obs":
        from outrider.sources.obs import ObsSource

        return ObsSource(ref, options, max_workers=max_workers)
    from outrider.sources.tos import TosSource

    return TosSource(ref, options, max_workers=max_workers)
