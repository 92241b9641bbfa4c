"""The API's request and response models: what /openapi.json describes, and what native bodies are checked against.

Native request models (`/v1/downloads`, `/v1/adapters/...`) are strict: unknown fields, wrong types (no coercion:
`"8"` is not a number) and over-long strings are a 400 naming the field. The compatible routes' models only
*describe* what the AIBrix and Kthena routes accept: those routes keep the peers' leniency (extra fields allowed,
`config` as an object or a JSON string, "" meaning unset), which real controllers rely on, and parse their bodies
in http/body.py. Response models describe answers; they are never used to re-validate one at run time (a model
drifting from the code would turn a good answer into a 500): the tests check real answers against the spec instead.

Examples hold no real-looking secrets: placeholders only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, WithJsonSchema

from outrider.adapters import names
from outrider.adapters.names import AIBRIX_DELEGATION_NAME, MAX_NAME
from outrider.option_types import MAX_DOWNLOAD_WORKERS
from outrider.sources.options import CREDENTIAL_KEYS, IGNORED_CREDENTIAL_KEYS, MAX_OPTION

# Longest URI, path or glob a request may carry; real ones are far shorter, and a bound keeps records small.
MAX_URI = 4096
# A model name the engine lifecycle makes directories and processes for: a safe file name.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$"
# bool_field's accepted spellings of a boolean in a query string or a compatible body (any case): pydantic's, as
# the peers' (pydantic) models take them.
BOOL_TEXT_PATTERN = (
    r"^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff]|[Tt]|[Ff]|[Yy]|[Nn]|1|0)$"
)
# A worker count in a compatible body, as a number or its digits: out of range is clamped, not refused.
WORKERS_TEXT_PATTERN = r"^\s*[+-]?[0-9]{1,9}\s*$"

# Any name the engine takes (adapters/names.py): `team/sql`, `sql:v2`.
ADAPTER_NAME_PATTERN = names.NAME_PATTERN
AdapterName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=ADAPTER_NAME_PATTERN)]
# The names AIBrix's delegation mode itself takes (it writes a directory named so).
DelegatedName = Annotated[str, StringConstraints(pattern=AIBRIX_DELEGATION_NAME.pattern)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI, pattern=r"\S")]
Glob = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI)]
Option = Annotated[str, StringConstraints(max_length=MAX_OPTION)]
BoolText = Annotated[str, StringConstraints(pattern=BOOL_TEXT_PATTERN)]
LaxBool = bool | Annotated[int, Field(ge=0, le=1)] | BoolText
Workers = Annotated[int, Field(ge=-(10**9), le=10**9)] | Annotated[str, StringConstraints(pattern=WORKERS_TEXT_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Lenient(BaseModel):
    # The compatible routes ignore fields they do not know, as the peers do.
    model_config = ConfigDict(extra="allow")


# -- errors ------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["dest must be a directory under the model root"])
    field: str | None = Field(default=None, description="The offending field (dotted path), when one is to blame")


class ErrorBody(BaseModel):
    """An error: `{"error": {"type", "message", "field"?}}`."""

    error: ErrorDetail


# -- downloads ---------------------------------------------------------------------------------------------------


class StoreConfig(_Strict):
    """Per-request store options; each overrides the pod's own (env) value. Credentials are never echoed."""

    access_key: Option | None = Field(default=None, examples=["<access-key>"])
    secret_key: Option | None = Field(default=None, examples=["<secret-key>"])
    session_token: Option | None = None
    endpoint: Option | None = Field(default=None, examples=["https://s3.example.internal"])
    region: Option | None = None
    hf_token: Option | None = Field(default=None, examples=["<hf-token>"])
    hf_endpoint: Option | None = None
    hf_revision: Option | None = None


class DownloadCreate(_Strict):
    """Start a download of `source` into `dest` (a directory under --model-root)."""

    source: Uri = Field(examples=["s3://bucket/models/llama", "org/model"])
    dest: Uri = Field(examples=["llama"])
    config: StoreConfig | None = None
    include: Glob | list[Glob] | None = Field(default=None, examples=[["*.json", "*.safetensors"]])
    exclude: Glob | list[Glob] | None = None
    workers: int | None = Field(default=None, ge=1, le=MAX_DOWNLOAD_WORKERS)
    chunk_size: Annotated[int, Field(ge=1)] | Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="Bytes, or a size like '16MiB'", examples=["16MiB"]
    )
    wait: bool = Field(default=False, description="Answer once the job has ended")


class JobFile(BaseModel):
    path: str
    size: int
    bytes_done: int
    state: str


class Job(BaseModel):
    """A download job."""

    id: str = Field(examples=["dl-1-a1b2c3"])
    state: Literal["queued", "running", "completed", "failed", "cancelled"]
    source: str
    revision: str | None
    dest: str
    include: list[str]
    exclude: list[str]
    bytes_done: int
    bytes_total: int
    bytes_fetched: int
    rate_bytes_per_second: float
    eta_seconds: float | None
    waiting_for: str | None = Field(
        default=None,
        description="Another process (pid and host) writing the same destination, which this job waits for",
        examples=["pid 41 on model-7d9f-abcde"],
    )
    files: list[JobFile]
    error: ErrorDetail | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    object: Literal["list"]
    data: list[Job]


class JobFailure(ErrorBody):
    """An error; when a waited-for job ended without completing, with the job as it ended."""

    job: Job | None = None


class KthenaDownload(_Lenient):
    """Kthena's download body (lenient, as the Kthena runtime: unknown fields are ignored, "" means unset)."""

    source: Uri = Field(examples=["s3://bucket/models/llama", "org/model"])
    output_dir: Uri = Field(examples=["llama"])
    config: dict[str, Any] | str | None = Field(default=None, description="An object, or a JSON string holding one")
    max_workers: Workers | None = Field(
        default=None, description=f"Clamped to 1..{MAX_DOWNLOAD_WORKERS}; a number or its digits"
    )
    async_download: LaxBool | None = False


class KthenaDownloadAnswer(BaseModel):
    status: Literal["started", "completed"]
    message: str
    source: str
    output_dir: str
    job_id: str


class KthenaDownloadFailure(ErrorBody):
    """An error; when the download itself failed, with Kthena's fields and the job as it ended."""

    status: Literal["failed"] | None = None
    message: str | None = None
    source: str | None = None
    output_dir: str | None = None
    job_id: str | None = None
    job: Job | None = None


class AIBrixDownload(_Lenient):
    """AIBrix's download body (lenient, as the AIBrix runtime)."""

    model_uri: Uri = Field(examples=["s3://bucket/models/llama"])
    local_dir: Annotated[str, StringConstraints(max_length=MAX_URI)] | None = None
    model_name: Annotated[str, StringConstraints(max_length=MAX_URI)] | None = None
    download_extra_config: dict[str, Any] | str | None = Field(
        default=None, description="An object, or a JSON string holding one"
    )


class ModelCard(BaseModel):
    model_name: str
    model_root_path: str
    source: str
    model_status: str = Field(examples=["downloading", "downloaded"])


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


# -- adapters ----------------------------------------------------------------------------------------------------


class AdapterDeclare(_Strict):
    """Declare an adapter: outrider keeps it loaded until it is retracted."""

    source: Uri = Field(examples=["s3://bucket/adapters/sql", "/volume/adapters/sql"])
    config: StoreConfig | None = None
    wait: bool = Field(default=False, description="Answer after the first load attempt that ends")


class AdapterRetract(_Strict):
    """An optional body for DELETE; `?wait=` in the query wins."""

    wait: bool = False


class WaitQuery(BaseModel):
    wait: BoolText | None = Field(default=None, description="true/false/1/0: answer once done (wins over the body)")


class AdapterError(BaseModel):
    type: str
    message: str
    status: int


class AdapterRecord(BaseModel):
    """A declared adapter and its state."""

    name: str
    source: str
    config_keys: list[str]
    origin: Literal["api", "file"]
    desired: bool
    state: Literal["pending", "downloading", "loading", "loaded", "unloading", "failed"]
    path: str | None
    attempts: int
    last_error: AdapterError | None
    retry_in_seconds: float | None
    created_at: str | None
    updated_at: str | None
    loaded_at: str | None


class AdapterAbsent(BaseModel):
    """An adapter that is not (or no longer) declared."""

    name: str
    state: Literal["absent"]


class AdapterAnswer(RootModel[AdapterRecord | AdapterAbsent]):
    """The adapter as it now is."""


class AdapterList(BaseModel):
    adapters: list[AdapterRecord]


class AdapterFailure(ErrorBody):
    """An error; when a waited-for attempt failed, with the adapter as it now is."""

    adapter: AdapterRecord | AdapterAbsent | None = None


# -- compatible LoRA routes --------------------------------------------------------------------------------------


class AIBrixLoad(_Lenient):
    """AIBrix's plain load: the adapter at `lora_path` (a volume path or any source), answered in text."""

    lora_name: AdapterName
    lora_path: Uri = Field(examples=["/volume/adapters/sql"])


# AIBrix's `credentials` / `additional_config`: strings under known keys only (the store's spelling, or an env or
# AIBrix downloader one); any other key is a 400. Spelled as `propertyNames` (pydantic would say `patternProperties`,
# which lets any other key through).
Credentials = Annotated[
    dict[str, Option],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"enum": sorted({*CREDENTIAL_KEYS, *IGNORED_CREDENTIAL_KEYS})},
            "additionalProperties": {"type": "string", "maxLength": MAX_OPTION},
        }
    ),
]


class AIBrixDelegatedLoad(_Lenient):
    """AIBrix 0.8's delegation mode (told apart by `artifact_url`): outrider fetches the artifact into
    `<adapter-root>/<lora_name>` and loads it from there, answering in JSON."""

    lora_name: DelegatedName
    artifact_url: Uri = Field(examples=["s3://bucket/adapters/sql", "huggingface://org/adapter", "pvc://adapters/sql"])
    credentials: Credentials | None = Field(
        default=None,
        description="Store options for this fetch, over the pod's own (as a download's `config`); never echoed",
        examples=[{"access_key": "<access-key>", "secret_key": "<secret-key>", "endpoint": "https://s3.example"}],
    )
    additional_config: Credentials | None = Field(default=None, description="Merged over `credentials`, key by key")
    credentials_secret: Annotated[str, StringConstraints(max_length=MAX_URI)] | None = Field(
        default=None,
        description="Ignored when `credentials` are given; alone, a 400: outrider reads no secret files (pass "
        "`credentials`, or give the pod the store's keys in its env)",
    )
    local_dir: Annotated[str, StringConstraints(max_length=MAX_URI)] | None = Field(
        default=None, description="Ignored: downloads land under --adapter-root, the volume the engine reads"
    )


class AIBrixLoadBody(RootModel[AIBrixLoad | AIBrixDelegatedLoad]):
    """AIBrix's load body, in either mode (lenient, as the AIBrix runtime: unknown fields are ignored)."""


class AIBrixLoadAnswer(BaseModel):
    """A delegated load's answer (a plain load answers the engine's text instead)."""

    status: Literal["success"]
    message: str = Field(examples=["Successfully loaded adapter sql from s3://bucket/adapters/sql"])
    local_path: str
    engine_response: dict[str, str] = Field(examples=[{"message": "Success: LoRA adapter 'sql' added successfully."}])


class LoraName(_Lenient):
    lora_name: AdapterName


class AIBrixCleanupUnload(_Lenient):
    """AIBrix 0.8's delegation mode (told apart by `cleanup_local`): success also when the engine lacks the adapter;
    `cleanup_local: false` keeps what outrider downloaded for it."""

    lora_name: DelegatedName
    cleanup_local: LaxBool | None = Field(default=True, description="Delete its downloaded files (null: true)")


class AIBrixUnloadBody(RootModel[LoraName | AIBrixCleanupUnload]):
    """AIBrix's unload body, in either mode (lenient, as the AIBrix runtime: unknown fields are ignored)."""


class AIBrixUnloadAnswer(BaseModel):
    """A delegated unload's answer (a plain unload answers the engine's text instead)."""

    status: Literal["success"]
    message: str = Field(examples=["Successfully unloaded adapter sql"])


class KthenaLoad(_Lenient):
    """Kthena's load body (lenient, as the Kthena runtime: unknown fields ignored, "" means unset)."""

    lora_name: AdapterName
    source: Uri = Field(examples=["s3://bucket/adapters/sql"])
    output_dir: Annotated[str, StringConstraints(max_length=MAX_URI)] | None = None
    config: dict[str, Any] | str | None = Field(default=None, description="An object, or a JSON string holding one")
    max_workers: Workers | None = Field(
        default=None, description=f"Clamped to 1..{MAX_DOWNLOAD_WORKERS}; a number or its digits"
    )
    async_download: LaxBool | None = False


class KthenaLoadAnswer(BaseModel):
    status: Literal["started", "success"]
    lora_name: str
    source: str
    output_dir: str | None
    message: str
    path: str | None = None


class KthenaUnloadAnswer(BaseModel):
    status: Literal["success"]
    lora_name: str
    message: str


class EngineModels(RootModel[dict[str, Any]]):
    """The engine's own /v1/models answer, relayed unchanged."""


# -- hot routes and documentation --------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["healthy"]
    service: Literal["runtime"]


class Healthz(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    engine: str
    model: str | None


class NotReady(BaseModel):
    status: Literal["not ready"]
    reason: str


class Startup(BaseModel):
    """The pod model's state (--pod-model): 200 once it is complete on disk (or when there is none), else 503."""

    status: Literal["ready", "downloading", "failed"]
    source: str | None = Field(examples=["s3://models/llama3"])
    model_dir: str | None = Field(default=None, examples=["/models/llama3"])
    bytes_done: int | None = None
    bytes_total: int | None = None
    files_done: int | None = None
    files_total: int | None = None
    rate_bytes_per_second: float | None = None
    waiting_for: str | None = Field(default=None, description="Another process fetching the same model")
    error: ErrorDetail | None = Field(default=None, description="Why the pod model failed for good")


class PlainText(RootModel[str]):
    """A text/plain answer."""
