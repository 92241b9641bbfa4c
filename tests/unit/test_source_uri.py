"""Source strings: what parses to which reference, and what is refused with a message naming `source`."""

from __future__ import annotations

import pytest

from outrider.errors import InvalidSource
from outrider.sources.uri import BucketRef, HubRef, ModelScopeRef, VolumeRef, parse_source


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("s3://models/llama/7b", BucketRef("s3", "models", "llama/7b")),
        ("s3://models/llama/7b/", BucketRef("s3", "models", "llama/7b")),
        ("s3://models", BucketRef("s3", "models", "")),
        ("s3://models/", BucketRef("s3", "models", "")),
        ("S3://models/x", BucketRef("s3", "models", "x")),
        ("obs://my-bucket.v2/adapters/a", BucketRef("obs", "my-bucket.v2", "adapters/a")),
        ("tos://bkt/p", BucketRef("tos", "bkt", "p")),
        ("  s3://models/x  ", BucketRef("s3", "models", "x")),
        ("pvc://models/llama", VolumeRef("models/llama", relative=True)),
        ("pvc:///models/llama/", VolumeRef("/models/llama", relative=False)),  # Kthena's absolute spelling
        ("/mnt/models/llama", VolumeRef("/mnt/models/llama", relative=False)),
        ("/mnt/models/llama/", VolumeRef("/mnt/models/llama", relative=False)),
        ("Qwen/Qwen2.5-0.5B", HubRef("Qwen/Qwen2.5-0.5B", None)),
        ("Qwen/Qwen2.5-0.5B@main", HubRef("Qwen/Qwen2.5-0.5B", "main")),
        ("hf://org/name", HubRef("org/name", None)),
        ("hf://org/name@abc123", HubRef("org/name", "abc123")),
        ("hf://org/name@refs/pr/1", HubRef("org/name", "refs/pr/1")),
        ("hf://gpt2", HubRef("gpt2", None)),
        ("huggingface://org/name", HubRef("org/name", None)),  # AIBrix's spelling
        ("ms://Qwen/Qwen2.5-7B-Instruct", ModelScopeRef("Qwen/Qwen2.5-7B-Instruct")),  # Kthena's ModelScope
        ("ms://Qwen/tiny@v1.0", ModelScopeRef("Qwen/tiny", "v1.0")),
        ("HuggingFace://org/name@v1", HubRef("org/name", "v1")),
    ],
)
def test_parses(raw: str, expected: object) -> None:
    assert parse_source(raw) == expected


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("s3://models/llama/", "s3://models/llama"),
        ("s3://models", "s3://models"),
        ("pvc://a/b/", "pvc://a/b"),
        ("pvc:///a/b", "/a/b"),
        ("/a/b/", "/a/b"),
        ("org/name", "hf://org/name"),
        ("org/name@v1", "hf://org/name@v1"),
    ],
)
def test_display_is_normalized(raw: str, display: str) -> None:
    assert parse_source(raw).display == display


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("gs://bucket/x", "unknown source scheme 'gs'"),
        ("http://example.com/model", "unknown source scheme 'http'"),
        ("file:///etc", "unknown source scheme 'file'"),
        ("s3://", "missing a bucket"),
        ("s3:///prefix", "missing a bucket"),
        ("s3://Bad_Bucket/x", "invalid bucket name"),
        ("s3://ab/x", "invalid bucket name"),
        ("s3://models/a/../b", "'..'"),
        ("s3://models/./b", "'.'"),
        ("s3://models/a//b", "empty"),
        ("tos://models/..", "'..'"),
        ("pvc://", "missing a path"),
        ("pvc://../etc", "'..'"),
        ("pvc://a/../../etc", "'..'"),
        ("/mnt/models/../../etc", "'..'"),
        ("org/", "org/name"),
        ("hf://", "empty repo"),
        ("hf://@main", "empty repo"),
        ("org/name@", "empty revision"),
        ("org/name@a..b", "invalid revision"),
        ("hf://a/b/c", "must be org/name"),
        ("gpt2", "must be org/name"),
        ("org/-bad", "invalid repo id"),
        ("org/na..me", "invalid repo id"),
        ("relative/path/deep", "must be org/name"),
        ("s3:/bucket/x", "malformed source"),
        ("s3//bucket", "must be org/name"),
        ("c:/models", "malformed source"),
    ],
)
def test_refuses_with_a_message_naming_the_field(raw: str, words: str) -> None:
    with pytest.raises(InvalidSource) as info:
        parse_source(raw)
    assert info.value.field == "source"
    assert info.value.status == 400
    assert words in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        "s3://AKIAEXAMPLE:s3cr3tValue@models/x",
        "s3://s3cr3tValue@models/x",
        "obs://AKIAEXAMPLE:s3cr3tValue@models",
        "tos://AKIAEXAMPLE:s3cr3tValue@models/x",
        "pvc://user:s3cr3tValue@host/x",
        "hf://user:s3cr3tValue@org/name",
        "user:s3cr3tValue@org/name",
        "s3://models/x?X-Amz-Signature=s3cr3tValue",
        "hf://org/name#s3cr3tValue",
        "org/name@rev:s3cr3tValue",
    ],
)
def test_credentials_in_the_source_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(InvalidSource) as info:
        parse_source(raw)
    assert info.value.field == "source"
    assert "s3cr3tValue" not in info.value.message
    assert "s3cr3tValue" not in str(info.value.to_json())


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidSource):
        parse_source(42)  # type: ignore[arg-type]
