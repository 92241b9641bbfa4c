"""Option precedence (request config over env, Kthena over AIBrix spelling) and the endpoint rule: the pod's own
credentials never go to an endpoint a request names, unless the operator allows it."""

from __future__ import annotations

import json

import pytest

from outrider.errors import InvalidRequest, SourceAccessDenied
from outrider.sources.options import (
    SourceOptions,
    credentials_config,
    env_defaults,
    parse_config,
    resolve_options,
)
from outrider.sources.uri import BucketRef, HubRef, ModelScopeRef, SourceRef

S3 = BucketRef("s3", "models", "llama")
OBS = BucketRef("obs", "models", "llama")
TOS = BucketRef("tos", "models", "llama")
HF = HubRef("org/name")

POD_ENV = {
    "ACCESS_KEY": "pod-kthena-ak",
    "SECRET_KEY": "pod-kthena-sk",
    "ENDPOINT": "https://minio.internal:9000",
    "AWS_ACCESS_KEY_ID": "pod-aws-ak",
    "AWS_SECRET_ACCESS_KEY": "pod-aws-sk",
    "AWS_ENDPOINT_URL": "https://s3.aibrix.example",
    "AWS_REGION": "eu-west-1",
    "TOS_ACCESS_KEY": "pod-tos-ak",
    "TOS_SECRET_KEY": "pod-tos-sk",
    "TOS_ENDPOINT": "tos-cn-beijing.volces.com",
    "TOS_REGION": "cn-beijing",
    "HF_AUTH_TOKEN": "hf_pod_kthena",
    "HF_TOKEN": "hf_pod_aibrix",
    "HF_ENDPOINT": "https://hf-mirror.internal",
    "HF_REVISION": "v2",
}
POD = env_defaults(POD_ENV)


# -- env ----------------------------------------------------------------------------------------------------------


def test_env_prefers_the_kthena_spelling() -> None:
    assert POD.access_key == "pod-kthena-ak"
    assert POD.secret_key == "pod-kthena-sk"
    assert POD.endpoint == "https://minio.internal:9000"
    assert POD.hf_token == "hf_pod_kthena"


def test_env_falls_back_to_the_aibrix_spelling() -> None:
    env = env_defaults({k: v for k, v in POD_ENV.items() if k not in ("ACCESS_KEY", "SECRET_KEY", "ENDPOINT")})
    assert (env.access_key, env.secret_key) == ("pod-aws-ak", "pod-aws-sk")
    assert env.endpoint == "https://s3.aibrix.example"
    assert env_defaults({"HF_TOKEN": "hf_x"}).hf_token == "hf_x"


def test_env_reads_tos_hf_and_region_and_normalizes_endpoints() -> None:
    assert POD.tos_endpoint == "https://tos-cn-beijing.volces.com"  # https when no scheme is given
    assert (POD.tos_access_key, POD.tos_secret_key, POD.tos_region) == ("pod-tos-ak", "pod-tos-sk", "cn-beijing")
    assert (POD.region, POD.hf_endpoint, POD.hf_revision) == ("eu-west-1", "https://hf-mirror.internal", "v2")
    assert env_defaults({"AWS_ENDPOINT_URL": "HTTP://LocalHost:9000/"}).endpoint == "http://localhost:9000"


def test_empty_env_values_count_as_unset() -> None:
    env = env_defaults({"ACCESS_KEY": "  ", "AWS_ACCESS_KEY_ID": "aws-ak", "HF_AUTH_TOKEN": ""})
    assert env.access_key == "aws-ak"
    assert env.hf_token is None
    assert env_defaults({}) == SourceOptions()


def test_malformed_env_endpoint_names_the_variable_without_echoing_credentials() -> None:
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL") as info:
        env_defaults({"AWS_ENDPOINT_URL": "https://ak:topsecret@s3.example"})
    assert "topsecret" not in str(info.value)
    with pytest.raises(ValueError, match="ENDPOINT"):
        env_defaults({"ENDPOINT": "ftp://files.example"})


def test_repr_never_shows_a_credential() -> None:
    text = repr(POD) + str(POD)
    for secret in ("pod-kthena-ak", "pod-kthena-sk", "pod-tos-sk", "hf_pod_kthena"):
        assert secret not in text
    assert "minio.internal" in text  # endpoints are not secrets and help debugging


# -- config -------------------------------------------------------------------------------------------------------


def test_config_accepts_an_object_a_json_string_or_nothing() -> None:
    body = {"access_key": "ak", "secret_key": "sk", "endpoint": "http://127.0.0.1:9000", "other": 1}
    assert (
        parse_config(body)
        == parse_config(json.dumps(body))
        == {
            "access_key": "ak",
            "secret_key": "sk",
            "endpoint": "http://127.0.0.1:9000",
        }
    )
    assert parse_config(None) == parse_config("") == parse_config("null") == parse_config({}) == {}


@pytest.mark.parametrize(
    "config",
    [
        "not json",
        "[1, 2]",
        '"a string"',
        42,
        ["access_key"],
        {"access_key": 5, "secret_key": "x"},
        {"hf_token": {"nested": "x"}},
        {"access_key": "ak-only"},
        {"secret_key": "sk-only"},
        {"endpoint": "ftp://x"},
        {"hf_endpoint": "https://u:p@hub.example"},
        {"endpoint": "https://s3.example?x=1"},
    ],
)
def test_bad_config_is_an_invalid_request_naming_config(config: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config(config)
    assert info.value.field == "config"
    assert info.value.status == 400


def test_bad_config_messages_do_not_echo_values() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_config({"access_key": "AKIAVISIBLE"})
    assert "AKIAVISIBLE" not in info.value.message
    with pytest.raises(InvalidRequest) as info:
        parse_config('{"secret_key": "topsecret", ')
    assert "topsecret" not in info.value.message


def test_aibrix_credentials_in_any_spelling_merge_into_one_config() -> None:
    """AIBrix's own downloader spellings, the env's and the store's all land on the store's keys; the second part
    (a delegated load's `additional_config`) wins key by key, as AIBrix merges it."""
    config = credentials_config(
        ("credentials", {"aws_access_key_id": "ak", "aws_secret_access_key": "sk", "aws_region": "r1"}),
        ("additional_config", {"AWS_REGION": "r2", "tos_endpoint": "tos.example", "enable_crc": "true"}),
    )
    assert config == {
        "access_key": "ak",
        "secret_key": "sk",
        "region": "r2",
        "endpoint": "https://tos.example",
    }
    assert credentials_config(("credentials", {"huggingface_token": "t"})) == {"hf_token": "t"}
    assert credentials_config(("credentials", None), ("additional_config", {})) is None
    # Keys split between the parts still travel together.
    assert credentials_config(("credentials", {"access_key": "ak"}), ("additional_config", {"SECRET_KEY": "sk"}))


@pytest.mark.parametrize(
    ("credentials", "extra", "field"),
    [
        ({"LD_PRELOAD": "/x.so"}, None, "credentials.LD_PRELOAD"),
        (["access_key"], None, "credentials"),
        ({"access_key": 5, "secret_key": "x"}, None, "credentials"),
        ({"enable_crc": ["x"]}, None, "credentials"),
        ({"endpoint": "x" * 5000}, None, "credentials"),
        ({"access_key": "ak-only"}, None, "credentials"),
        ({"access_key": "ak", "secret_key": "sk"}, {"endpoint": "ftp://x"}, "additional_config"),
        (None, {"gcp_service_account_json": "{}"}, "additional_config.gcp_service_account_json"),
    ],
)
def test_bad_credentials_name_their_part(credentials: object, extra: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        credentials_config(("credentials", credentials), ("additional_config", extra))
    assert (info.value.field, info.value.status) == (field, 400)
    assert "ak-only" not in info.value.message


# -- precedence ---------------------------------------------------------------------------------------------------


def test_no_config_uses_the_pods_env() -> None:
    opts = resolve_options(S3, None, POD)
    assert (opts.access_key, opts.secret_key, opts.endpoint) == ("pod-kthena-ak", "pod-kthena-sk", POD.endpoint)
    assert opts.region == "eu-west-1"
    assert opts.ambient_credentials


def test_request_keys_win_over_env_keys() -> None:
    opts = resolve_options(S3, {"access_key": "req-ak", "secret_key": "req-sk"}, POD)
    assert (opts.access_key, opts.secret_key, opts.endpoint) == ("req-ak", "req-sk", POD.endpoint)
    assert opts.session_token is None  # never the pod's token with the request's keys


def test_request_region_wins() -> None:
    assert resolve_options(S3, {"region": "ap-south-1"}, POD).region == "ap-south-1"


def test_tos_reads_the_tos_variables_and_request_keys_win() -> None:
    opts = resolve_options(TOS, None, POD)
    assert (opts.access_key, opts.secret_key) == ("pod-tos-ak", "pod-tos-sk")
    assert (opts.endpoint, opts.region) == ("https://tos-cn-beijing.volces.com", "cn-beijing")
    req = resolve_options(TOS, {"access_key": "req-ak", "secret_key": "req-sk"}, POD)
    assert (req.access_key, req.secret_key) == ("req-ak", "req-sk")


def test_hf_token_endpoint_and_revision_precedence() -> None:
    opts = resolve_options(HF, None, POD)
    assert (opts.hf_token, opts.hf_endpoint, opts.hf_revision) == ("hf_pod_kthena", POD.hf_endpoint, "v2")
    opts = resolve_options(HF, {"hf_token": "hf_req", "hf_revision": "main"}, POD)
    assert (opts.hf_token, opts.hf_revision) == ("hf_req", "main")
    # a store's keys are not handed to the hub, nor the hub's token to a store
    assert opts.access_key is None and opts.secret_key is None
    assert resolve_options(S3, None, POD).hf_token is None


def test_modelscope_token_endpoint_and_revision_and_the_endpoint_rule() -> None:
    """Kthena's ms_token / ms_revision (and MS_TOKEN, MS_REVISION); the pod's token only to the pod's endpoint."""
    ms = ModelScopeRef("Qwen/tiny")
    pod = env_defaults({"MS_TOKEN": "ms-pod-token", "MS_REVISION": "v1"})
    opts = resolve_options(ms, None, pod)
    assert (opts.ms_token, opts.ms_revision, opts.hf_token, opts.access_key) == ("ms-pod-token", "v1", None, None)
    assert resolve_options(ms, {"ms_endpoint": "https://www.modelscope.cn"}, pod).ms_token == "ms-pod-token"
    with pytest.raises(SourceAccessDenied, match="ms_token"):
        resolve_options(ms, {"ms_endpoint": "https://ms.example"}, pod)
    own = resolve_options(ms, {"ms_endpoint": "https://ms.example", "ms_token": "ms-own"}, pod)
    assert (own.ms_token, own.ambient_credentials, own.request_endpoint) == ("ms-own", False, True)
    assert resolve_options(S3, None, pod).ms_token is None


# -- the endpoint rule --------------------------------------------------------------------------------------------


def refused(ref: SourceRef, config: dict[str, str], pod: SourceOptions = POD) -> bool:
    """Whether the request is refused for naming a foreign endpoint without credentials of its own (a 403 naming
    `config`, before any store is contacted)."""
    try:
        resolve_options(ref, config, pod)
    except SourceAccessDenied as exc:
        assert exc.field == "config" and exc.status == 403
        assert "--allow-request-endpoints" in exc.message
        return True
    return False


@pytest.mark.parametrize("ref", [S3, OBS, TOS])
def test_foreign_endpoint_without_own_keys_is_refused(ref: BucketRef) -> None:
    """Anyone who may call a download route would otherwise make the pod send (unsigned) requests anywhere."""
    assert refused(ref, {"endpoint": "https://attacker.example"})
    assert refused(ref, {"endpoint": "http://10.0.0.9:9000", "session_token": "t"})


@pytest.mark.parametrize("ref", [S3, OBS, TOS])
def test_foreign_endpoint_with_own_keys_uses_them(ref: BucketRef) -> None:
    config = {"endpoint": "http://10.0.0.9:9000", "access_key": "req-ak", "secret_key": "req-sk"}
    opts = resolve_options(ref, json.dumps(config), POD)
    assert (opts.access_key, opts.secret_key, opts.endpoint) == ("req-ak", "req-sk", "http://10.0.0.9:9000")
    assert not opts.ambient_credentials
    assert opts.request_endpoint  # its answers are not relayed


@pytest.mark.parametrize(
    "same",
    [
        "https://minio.internal:9000",
        "https://minio.internal:9000/",
        "HTTPS://MINIO.internal:9000",
        "minio.internal:9000",  # https is assumed
    ],
)
def test_naming_the_pods_own_endpoint_keeps_the_pods_credentials(same: str) -> None:
    opts = resolve_options(S3, {"endpoint": same}, POD)
    assert (opts.access_key, opts.secret_key) == ("pod-kthena-ak", "pod-kthena-sk")
    assert opts.ambient_credentials


def test_default_ports_compare_equal() -> None:
    pod = env_defaults({"ENDPOINT": "https://s3.example", "ACCESS_KEY": "ak", "SECRET_KEY": "sk"})
    assert resolve_options(S3, {"endpoint": "https://s3.example:443"}, pod).access_key == "ak"
    assert not resolve_options(S3, {"endpoint": "https://s3.example:443"}, pod).request_endpoint
    assert refused(S3, {"endpoint": "http://s3.example"}, pod)  # scheme differs


@pytest.mark.parametrize(
    "other",
    [
        "https://minio.internal:9001",  # another port
        "http://minio.internal:9000",  # downgraded to plain http
        "https://minio.internal.evil.example:9000",
        "https://minio.internal:9000/other-path",
    ],
)
def test_near_misses_of_the_pods_endpoint_are_foreign(other: str) -> None:
    assert refused(S3, {"endpoint": other})


def test_any_endpoint_is_foreign_when_the_pod_names_none() -> None:
    pod = env_defaults({"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"})  # real AWS, default endpoint
    assert resolve_options(S3, None, pod).access_key == "ak"
    assert refused(S3, {"endpoint": "https://s3.amazonaws.com"}, pod)


def test_tos_rule_compares_against_the_tos_endpoint() -> None:
    assert resolve_options(TOS, {"endpoint": "https://tos-cn-beijing.volces.com"}, POD).access_key == "pod-tos-ak"
    # the generic pod endpoint is not the TOS one
    assert refused(TOS, {"endpoint": "https://minio.internal:9000"})


def test_allow_request_endpoints_lifts_the_rule() -> None:
    opts = resolve_options(S3, {"endpoint": "https://other.example"}, POD, allow_request_endpoints=True)
    assert (opts.access_key, opts.secret_key) == ("pod-kthena-ak", "pod-kthena-sk")
    assert opts.ambient_credentials
    hf = resolve_options(HF, {"hf_endpoint": "https://other.example"}, POD, allow_request_endpoints=True)
    assert hf.hf_token == "hf_pod_kthena"


def test_foreign_hf_endpoint_never_gets_the_pods_token() -> None:
    """Kthena's leak: a caller chose hf_endpoint and the pod's HF_AUTH_TOKEN was sent there."""
    assert refused(HF, {"hf_endpoint": "https://attacker.example"})
    own = resolve_options(HF, {"hf_endpoint": "https://attacker.example", "hf_token": "hf_callers"}, POD)
    assert own.hf_token == "hf_callers"
    assert not own.ambient_credentials  # nor huggingface_hub's cached login
    assert own.request_endpoint


def test_hf_endpoint_equal_to_the_pods_keeps_the_token() -> None:
    assert resolve_options(HF, {"hf_endpoint": "https://hf-mirror.internal/"}, POD).hf_token == "hf_pod_kthena"


def test_pod_without_hf_endpoint_trusts_only_the_public_hub() -> None:
    pod = env_defaults({"HF_TOKEN": "hf_pod"})
    assert resolve_options(HF, {"hf_endpoint": "https://huggingface.co"}, pod).hf_token == "hf_pod"
    assert refused(HF, {"hf_endpoint": "https://hf-mirror.com"}, pod)


def test_store_endpoint_in_a_hf_request_does_not_affect_the_hub_rule() -> None:
    opts = resolve_options(HF, {"endpoint": "https://attacker.example"}, POD)
    assert opts.hf_token == "hf_pod_kthena"
    assert opts.hf_endpoint == POD.hf_endpoint
