"""Credentials and endpoints for a source, and the precedence that picks them.

Order of precedence, highest first:
1. the request's `config` (Kthena keys: `access_key`, `secret_key`, `endpoint`, `hf_token`, `hf_endpoint`,
   `hf_revision`; also `session_token` and `region`), given as a JSON object or a JSON string;
2. the pod's env, Kthena spelling first (`ACCESS_KEY`, `SECRET_KEY`, `ENDPOINT`, `HF_AUTH_TOKEN`, `HF_ENDPOINT`,
   `HF_REVISION`), then the AIBrix spelling (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
   `AWS_ENDPOINT_URL`, `AWS_REGION`, `TOS_ACCESS_KEY`, `TOS_SECRET_KEY`, `TOS_ENDPOINT`, `TOS_REGION`, `HF_TOKEN`).
   A `tos://` source reads the `TOS_*` variables, the other stores the generic ones.

The security rule (Kthena sent its own `HF_AUTH_TOKEN` to any `hf_endpoint` a caller chose): the pod's own
credentials only ever go to the pod's own endpoint. A request that names a different endpoint must bring its own
credentials (`access_key` and `secret_key`, or `hf_token`), which are the only ones sent there (never the pod's
keys, the default AWS credential chain, or a Hugging Face token cached on disk); without them it is refused (403
naming `config`) before anything is sent: anyone who may call the route could otherwise make the pod send requests
to any address it can reach, an internal one included. What such an endpoint answers is never relayed either
(`SourceOptions.request_endpoint`): an error names its HTTP status only. `allow_request_endpoints=True` (the
operator's `--allow-request-endpoints`) lifts the rule: the pod's credentials then go to the endpoint a request
names, and an anonymous request is sent there.

Only `cli.py` reads `os.environ`; it hands the mapping to `env_defaults`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from outrider.errors import InvalidRequest, SourceAccessDenied
from outrider.logs import register_secrets
from outrider.sources.uri import BucketRef, HubRef, ModelScopeRef, SourceRef

log = logging.getLogger(__name__)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_HF_REVISION = "main"
DEFAULT_MS_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_MS_REVISION = "master"

# Longest value of one store option (a key, an endpoint, a token) in an AIBrix-shaped `credentials`, as in a
# native `config`: real ones are far shorter, and a bound keeps records small.
MAX_OPTION = 4096
# The keys of a request's `config` that hold credentials (registered with the log redactor when parsed).
SECRET_CONFIG_KEYS = ("access_key", "secret_key", "session_token", "hf_token", "ms_token")
# Keys a request's `config` may set. Unknown keys are ignored: Kthena and AIBrix clients send extra ones.
_CONFIG_KEYS = (
    "access_key",
    "secret_key",
    "session_token",
    "endpoint",
    "region",
    "hf_token",
    "hf_endpoint",
    "hf_revision",
    "ms_token",
    "ms_endpoint",
    "ms_revision",
)

# `credentials` keys the AIBrix-shaped routes take (an engine activation's, a delegated LoRA load's and its
# `additional_config`), to their `config` key: the store's spelling, the pod environment's (Kthena, AIBrix), and
# the one AIBrix 0.8's own artifact downloaders read (`aws_access_key_id`, `TOS_ACCESS_KEY`, `huggingface_token`).
CREDENTIAL_KEYS = {
    **{key: key for key in _CONFIG_KEYS},
    "ACCESS_KEY": "access_key",
    "AWS_ACCESS_KEY_ID": "access_key",
    "aws_access_key_id": "access_key",
    "TOS_ACCESS_KEY": "access_key",
    "SECRET_KEY": "secret_key",
    "AWS_SECRET_ACCESS_KEY": "secret_key",
    "aws_secret_access_key": "secret_key",
    "TOS_SECRET_KEY": "secret_key",
    "AWS_SESSION_TOKEN": "session_token",
    "aws_session_token": "session_token",
    "TOS_SESSION_KEY": "session_token",
    "ENDPOINT": "endpoint",
    "AWS_ENDPOINT_URL": "endpoint",
    "aws_endpoint_url": "endpoint",
    "tos_endpoint": "endpoint",
    "AWS_REGION": "region",
    "aws_region": "region",
    "tos_region": "region",
    "HF_TOKEN": "hf_token",
    "HF_AUTH_TOKEN": "hf_token",
    "huggingface_token": "hf_token",
    "HF_ENDPOINT": "hf_endpoint",
    "HF_REVISION": "hf_revision",
}
# Keys AIBrix's TOS downloader reads that outrider has no use for: it checks TOS's CRC64 on every download anyway.
IGNORED_CREDENTIAL_KEYS = frozenset({"enable_crc", "tos_enable_crc"})


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """Everything a store needs besides the source itself. Credentials never appear in the repr.

    `ambient_credentials`: whether a store may fall back to credentials it finds on its own when none are given
    here (boto3's default chain and IRSA, huggingface_hub's cached token). False when the request named a foreign
    endpoint: then only what the request brought is sent.
    `request_endpoint`: the endpoint is one a request named, not the pod's: a store's errors then carry its HTTP
    status or error code class only, never what it answered (it may be any service the pod can reach).
    """

    access_key: str | None = dataclasses.field(default=None, repr=False)
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    endpoint: str | None = None
    region: str | None = None
    tos_access_key: str | None = dataclasses.field(default=None, repr=False)
    tos_secret_key: str | None = dataclasses.field(default=None, repr=False)
    tos_endpoint: str | None = None
    tos_region: str | None = None
    hf_token: str | None = dataclasses.field(default=None, repr=False)
    hf_endpoint: str | None = None
    hf_revision: str | None = None
    ms_token: str | None = dataclasses.field(default=None, repr=False)
    ms_endpoint: str | None = None
    ms_revision: str | None = None
    ambient_credentials: bool = True
    request_endpoint: bool = False


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def normalize_endpoint(raw: str, what: str) -> str:
    """`scheme://host[:port][/path]` with a lowercase scheme and host and no trailing '/'; https when none is given.

    Raises ValueError naming `what` (and never echoing a URL that may carry credentials)."""
    value = raw.strip()
    if "://" not in value:
        value = "https://" + value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what}: malformed endpoint URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: expected an endpoint like https://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what}: credentials are not accepted inside an endpoint URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{what}: an endpoint must not carry a query or fragment")
    host = parts.hostname.lower()
    # The SDKs refuse (with a bare ValueError) hosts and paths that are not plain ASCII URL text: refuse them here.
    if not re.fullmatch(r"[a-z0-9._\-:]+", host) or any(not 33 <= ord(c) < 127 for c in parts.path):
        raise ValueError(f"{what}: the endpoint's host or path holds characters a URL cannot carry")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _same_endpoint(a: str | None, b: str | None) -> bool:
    """Equal after normalization, counting a default port (80/443) as absent."""

    def canonical(url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        port = parts.port if parts.port not in (None, default) else None
        return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path.rstrip('/')}"

    return canonical(a) == canonical(b)


def env_defaults(environ: Mapping[str, str]) -> SourceOptions:
    """The pod's own options from its env (Kthena spelling first, then AIBrix's). Pure: pass `os.environ`.

    Raises ValueError naming the variable when an endpoint is malformed."""

    def endpoint(*names: str) -> str | None:
        for name in names:
            value = _first(environ, name)
            if value is not None:
                return normalize_endpoint(value, name)
        return None

    return SourceOptions(
        access_key=_first(environ, "ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        secret_key=_first(environ, "SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        session_token=_first(environ, "AWS_SESSION_TOKEN"),
        endpoint=endpoint("ENDPOINT", "AWS_ENDPOINT_URL"),
        region=_first(environ, "AWS_REGION", "AWS_DEFAULT_REGION"),
        tos_access_key=_first(environ, "TOS_ACCESS_KEY"),
        tos_secret_key=_first(environ, "TOS_SECRET_KEY"),
        tos_endpoint=endpoint("TOS_ENDPOINT"),
        tos_region=_first(environ, "TOS_REGION"),
        hf_token=_first(environ, "HF_AUTH_TOKEN", "HF_TOKEN"),
        hf_endpoint=endpoint("HF_ENDPOINT"),
        hf_revision=_first(environ, "HF_REVISION"),
        ms_token=_first(environ, "MS_TOKEN"),
        ms_endpoint=endpoint("MS_ENDPOINT"),
        ms_revision=_first(environ, "MS_REVISION"),
    )


def parse_config(config: object, field: str = "config", *, pairs: bool = True) -> dict[str, str]:
    """A request's `config`: None, a JSON object, or a JSON string holding one. Only the known keys are kept.

    Raises InvalidRequest naming `field` (the request's name for it: `config` for downloads, `credentials` for
    an engine activation); messages never echo a value. `pairs=False` skips the rule that keys travel together
    (for one part of a config merged from several)."""
    if config is None or config == "":
        return {}
    data: Any = config
    if isinstance(config, str | bytes):
        try:
            data = json.loads(config)
        except ValueError:
            raise InvalidRequest(f"{field} must be a JSON object or a string holding one", field=field) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"{field} must be a JSON object or a string holding one", field=field)
    # Before any check can fail: the log redactor then masks these values wherever they turn up later.
    register_secrets(*(data.get(key) for key in SECRET_CONFIG_KEYS))
    result: dict[str, str] = {}
    for key in _CONFIG_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"{field}.{key} must be a string", field=field)
        if value.strip():
            result[key] = value.strip()
    for key in ("endpoint", "hf_endpoint", "ms_endpoint"):
        if key in result:
            try:
                result[key] = normalize_endpoint(result[key], f"{field}.{key}")
            except ValueError as exc:
                raise InvalidRequest(str(exc), field=field) from None
    if pairs and ("access_key" in result) != ("secret_key" in result):
        raise InvalidRequest(f"{field}.access_key and {field}.secret_key must be given together", field=field)
    return result


def credentials_config(*parts: tuple[str, object], ignore_unknown: bool = False) -> dict[str, str] | None:
    """AIBrix-shaped `credentials` (and what is merged over them, e.g. a LoRA load's `additional_config`) as a
    download's `config`: `parts` are (field, mapping) pairs, later ones winning key by key, as AIBrix merges them.

    An unknown key is refused naming `field.key`, or with `ignore_unknown` dropped (its name logged, never its
    value: AIBrix's controller forwards every key of a credentials secret and all of `additionalConfig`); anything
    else is refused naming the part's field (a value is never echoed). Returns None when no part holds a key."""
    merged: dict[str, str] = {}
    for field, credentials in parts:
        if credentials is None or credentials == "":
            continue
        if not isinstance(credentials, Mapping):
            raise InvalidRequest(f"{field} must be a JSON object of strings", field=field)
        register_secrets(*credentials.values())  # before anything can fail and be logged
        config: dict[str, object] = {}
        for key, value in credentials.items():
            if ignore_unknown and key not in CREDENTIAL_KEYS and key not in IGNORED_CREDENTIAL_KEYS:
                log.info("%s: key %r has no meaning for a download; ignored", field, key[:64])
                continue
            if isinstance(value, str) and len(value) > MAX_OPTION:
                raise InvalidRequest(f"{field}.{key} is longer than {MAX_OPTION} characters", field=field)
            if key in IGNORED_CREDENTIAL_KEYS:
                if not isinstance(value, str):
                    raise InvalidRequest(f"{field}.{key} must be a string", field=field)
                continue
            target = CREDENTIAL_KEYS.get(key)
            if target is None:
                key = key if len(key) <= 64 else key[:64] + "..."  # a key is no secret, but may be any length
                raise InvalidRequest(
                    f"{field} key {key!r} is not known (use access_key, secret_key, session_token, endpoint, region, "
                    "hf_token, hf_endpoint, hf_revision, or their AWS_* / TOS_* / HF_* variable names)",
                    field=f"{field}.{key}",
                )
            config[target] = value
        # Each part's values are checked naming the part (types, endpoints); the pair rule once they are merged.
        merged.update(parse_config(config, field, pairs=False))
    if not merged:
        return None
    return parse_config(merged, field=parts[0][0])


def resolve_options(
    ref: SourceRef, config: object, env: SourceOptions, *, allow_request_endpoints: bool = False
) -> SourceOptions:
    """The options one download uses: the request's `config` over the pod's `env`, under the security rule.

    The result is specialized for `ref`'s store: a `tos://` source finds the TOS keys in the generic fields
    (`access_key`, `secret_key`, `endpoint`, `region`), so a store module only reads those and the `hf_*` ones."""
    request = parse_config(config)
    pod_keys: tuple[str | None, str | None, str | None]
    keys: tuple[str | None, str | None, str | None]
    if isinstance(ref, BucketRef) and ref.scheme == "tos":
        pod_keys = (env.tos_access_key, env.tos_secret_key, None)
        pod_endpoint, pod_region = env.tos_endpoint, env.tos_region
    else:
        pod_keys = (env.access_key, env.secret_key, env.session_token)
        pod_endpoint, pod_region = env.endpoint, env.region

    if isinstance(ref, HubRef):
        hf_endpoint = request.get("hf_endpoint", env.hf_endpoint)
        pod_hf = env.hf_endpoint or DEFAULT_HF_ENDPOINT
        hf_foreign = "hf_endpoint" in request and not _same_endpoint(hf_endpoint, pod_hf)
        if hf_foreign and "hf_token" not in request and not allow_request_endpoints:
            raise _anonymous_endpoint("hf_endpoint", "hf_token")
        trust_pod = allow_request_endpoints or not hf_foreign
        hf_token = request.get("hf_token") or (env.hf_token if trust_pod else None)
        return SourceOptions(
            hf_token=hf_token,
            hf_endpoint=hf_endpoint,
            hf_revision=request.get("hf_revision", env.hf_revision),
            ambient_credentials=trust_pod,
            request_endpoint=hf_foreign,
        )

    if isinstance(ref, ModelScopeRef):  # the Hugging Face rule, for ModelScope's token and endpoint
        ms_endpoint = request.get("ms_endpoint", env.ms_endpoint)
        ms_foreign = "ms_endpoint" in request and not _same_endpoint(
            ms_endpoint, env.ms_endpoint or DEFAULT_MS_ENDPOINT
        )
        if ms_foreign and "ms_token" not in request and not allow_request_endpoints:
            raise _anonymous_endpoint("ms_endpoint", "ms_token")
        trust_pod = allow_request_endpoints or not ms_foreign
        return SourceOptions(
            ms_token=request.get("ms_token") or (env.ms_token if trust_pod else None),
            ms_endpoint=ms_endpoint,
            ms_revision=request.get("ms_revision", env.ms_revision),
            ambient_credentials=trust_pod,
            request_endpoint=ms_foreign,
        )

    endpoint = request.get("endpoint", pod_endpoint)
    foreign = "endpoint" in request and not _same_endpoint(endpoint, pod_endpoint)
    if foreign and "access_key" not in request and not allow_request_endpoints:
        raise _anonymous_endpoint("endpoint", "access_key and secret_key")
    trust_pod = allow_request_endpoints or not foreign
    if "access_key" in request:
        # Credentials travel as a unit: never a request key with the pod's secret.
        keys = (request["access_key"], request["secret_key"], request.get("session_token"))
    elif trust_pod:
        keys = pod_keys
    else:
        keys = (None, None, None)
    return SourceOptions(
        access_key=keys[0],
        secret_key=keys[1],
        session_token=keys[2],
        endpoint=endpoint,
        region=request.get("region", pod_region),
        ambient_credentials=trust_pod,
        request_endpoint=foreign,
    )


def _anonymous_endpoint(key: str, credentials: str) -> SourceAccessDenied:
    return SourceAccessDenied(
        f"config.{key} names an endpoint other than the pod's, and the request brings no credentials for it "
        f"({credentials}): outrider contacts such an endpoint only with the request's own credentials "
        "(--allow-request-endpoints lifts this rule)",
        field="config",
    )
