"""Parse a source string into a typed reference, refusing anything malformed before a store is contacted.

Accepted spellings:
- `s3://bucket[/prefix]`, `obs://bucket[/prefix]`, `tos://bucket[/prefix]`: an object store bucket and key prefix.
- `pvc://path`: a directory on a mounted volume, relative to the pod's `--pvc-root`.
- `pvc:///absolute/path` (three slashes), or `/absolute/path`: a directory on a mounted volume, named absolutely,
  as Kthena reads `pvc:///<claim>/<path>` (its claim mounted at `/<claim>`); it must still lie under `--pvc-root`
  (or, for an adapter, under the adapter root). Kthena reads `pvc://path` as `/path` too; outrider keeps that
  spelling relative to `--pvc-root`, which no volume layout needs to be `/`.
- `ms://owner/name[@revision]`: a ModelScope model repo (Kthena's spelling).
- `org/name`, `hf://org/name`, `hf://name`, each with an optional `@revision`: a Hugging Face model repo
  (`huggingface://` is AIBrix's spelling of `hf://`).

Every refusal is an `InvalidSource` with `field="source"`. A source that looks like it carries a credential
(`s3://key:secret@bucket`), a query or a fragment is refused without echoing it, since those are where presigned
URLs and pasted keys hide.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from outrider.errors import InvalidSource

OBJECT_STORE_SCHEMES = ("s3", "obs", "tos")
# S3, OBS and TOS share the DNS-compatible bucket naming rules: 3-63 lowercase letters, digits, dots, hyphens.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Hugging Face repo ids: `name` or `namespace/name`, each part letters, digits, '-', '_', '.', at most 96 chars.
_HF_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
# A git revision: branch, tag or commit. Branch names may hold '/'; '..' is refused below.
_REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class _Ref:
    """What the kinds of reference share: `display`, the source spelled back as a user would write it (for logs and
    errors). Each kind gives `_SPELLINGS`: the field that may be empty, the spelling when it is set, and when not."""

    _SPELLINGS: ClassVar[tuple[str, str, str]]

    @property
    def display(self) -> str:
        optional, when_set, when_empty = self._SPELLINGS
        return (when_set if getattr(self, optional) else when_empty).format_map(vars(self))


@dataclasses.dataclass(frozen=True)
class BucketRef(_Ref):
    """An object-store prefix: `scheme` is one of s3, obs, tos; `prefix` has no leading or trailing '/'."""

    scheme: str
    bucket: str
    prefix: str

    _SPELLINGS = ("prefix", "{scheme}://{bucket}/{prefix}", "{scheme}://{bucket}")


@dataclasses.dataclass(frozen=True)
class HubRef(_Ref):
    """A Hugging Face model repo; `revision` is None when the source names none (the caller picks a default)."""

    repo: str
    revision: str | None = None

    _SPELLINGS = ("revision", "hf://{repo}@{revision}", "hf://{repo}")


@dataclasses.dataclass(frozen=True)
class VolumeRef(_Ref):
    """A directory on a mounted volume: `relative` is under the pvc root, else `path` is absolute."""

    path: str
    relative: bool

    _SPELLINGS = ("relative", "pvc://{path}", "{path}")


@dataclasses.dataclass(frozen=True)
class ModelScopeRef(_Ref):
    """A ModelScope model repo (`ms://owner/name[@revision]`, Kthena's spelling); `revision` None: the default."""

    repo: str
    revision: str | None = None

    _SPELLINGS = ("revision", "ms://{repo}@{revision}", "ms://{repo}")


SourceRef = BucketRef | HubRef | VolumeRef | ModelScopeRef


def _invalid(message: str) -> InvalidSource:
    return InvalidSource(message, field="source")


def _check_parts(parts: list[str], what: str) -> None:
    for part in parts:
        if part in ("", ".", ".."):
            raise _invalid(f"source {what} must not contain empty, '.' or '..' path parts")
        if any(ord(c) < 0x20 or c in "\\\x7f" for c in part):
            raise _invalid(f"source {what} must not contain control characters or backslashes")


def _split_path(path: str, what: str) -> str:
    """Normalize a '/'-separated path: strip outer slashes, refuse empty, '.' and '..' parts."""
    stripped = path.strip("/")
    if not stripped:
        return ""
    parts = stripped.split("/")
    _check_parts(parts, what)
    return "/".join(parts)


def _parse_bucket(scheme: str, rest: str) -> BucketRef:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise _invalid(f"{scheme}:// source is missing a bucket (expected {scheme}://bucket/prefix)")
    if not _BUCKET_RE.match(bucket):
        raise _invalid(
            f"{scheme}:// source has an invalid bucket name {bucket!r} "
            "(3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit)"
        )
    return BucketRef(scheme, bucket, _split_path(prefix, "prefix"))


def _parse_hub(rest: str, *, allow_bare_name: bool) -> HubRef:
    repo, at, revision = rest.partition("@")
    if ":" in repo:
        raise _invalid("Hugging Face source must be org/name[@revision]; credentials are not accepted in the source")
    repo = repo.strip("/")
    if not repo:
        raise _invalid("Hugging Face source has an empty repo name (expected org/name)")
    parts = repo.split("/")
    if len(parts) > 2 or (len(parts) == 1 and not allow_bare_name):
        raise _invalid(f"Hugging Face source {repo!r} must be org/name")
    for part in parts:
        if not _HF_PART_RE.match(part) or ".." in part:
            raise _invalid(f"Hugging Face source {repo!r} has an invalid repo id (letters, digits, '-', '_', '.')")
    if at:
        if not revision:
            raise _invalid("Hugging Face source has an empty revision after '@'")
        if not _REVISION_RE.match(revision) or ".." in revision or revision.startswith("/") or revision.endswith("/"):
            raise _invalid("Hugging Face source has an invalid revision (letters, digits, '.', '_', '-', '/')")
    return HubRef(repo, revision if at else None)


def parse_source(raw: str) -> SourceRef:
    """Parse a source string (see the module docstring) or raise InvalidSource with `field="source"`."""
    if not isinstance(raw, str):
        raise _invalid("source must be a string")
    source = raw.strip()
    if not source:
        raise _invalid("source is empty")
    if "\x00" in source:
        raise _invalid("source must not contain NUL characters")
    if "?" in source or "#" in source:
        # Presigned URLs carry their signature in the query; never echo it.
        raise _invalid("source must not carry a query ('?') or fragment ('#')")

    match = _SCHEME_RE.match(source)
    if match is None:
        if "://" in source or ":" in source.split("/", 1)[0]:
            raise _invalid("malformed source: expected scheme://..., an absolute path, or a Hugging Face org/name")
        if source.startswith("/"):
            _split_path(source, "path")  # refuse '..' and '.' parts
            normalized = "/" + source.strip("/")
            return VolumeRef(normalized, relative=False)
        return _parse_hub(source, allow_bare_name=False)

    scheme = match.group(1).lower()
    rest = source[match.end() :]
    authority = rest.split("/", 1)[0]
    if scheme == "huggingface":  # AIBrix's artifact URLs spell the Hub so
        scheme = "hf"
    if "@" in authority and scheme != "hf":
        raise _invalid(
            f"{scheme}:// source must not carry credentials; pass them in the request's config or the pod's env"
        )
    if scheme in OBJECT_STORE_SCHEMES:
        return _parse_bucket(scheme, rest)
    if scheme == "hf":
        return _parse_hub(rest, allow_bare_name=True)
    if scheme == "ms":  # ModelScope repo ids are owner/name, in the Hub's alphabet
        hub = _parse_hub(rest, allow_bare_name=False)
        return ModelScopeRef(hub.repo, hub.revision)
    if scheme == "pvc":
        path = _split_path(rest, "path")
        if not path:
            raise _invalid("pvc:// source is missing a path (expected pvc://dir)")
        return VolumeRef("/" + path, relative=False) if rest.startswith("/") else VolumeRef(path, relative=True)
    known = ", ".join(f"{s}://" for s in (*OBJECT_STORE_SCHEMES, "pvc", "hf", "ms"))
    raise _invalid(f"unknown source scheme {scheme!r} (expected one of: {known}, an absolute path, or org/name)")
