"""Request and answer models of the engine lifecycle routes (`/v1/runtime/...`), in AIBrix 0.8.0's shapes.

AIBrix's own models forbid unknown fields, and so do these; they are strict about types too (AIBrix's controller
sends numbers as numbers, `engine_config.args` values as strings). The answers carry AIBrix's fields; an error
answer carries both AIBrix's (`status: "error"`, `message`, which its controller reads to tell a refusal) and
outrider's (`error: {type, message, field}`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from outrider.adapters.names import MAX_NAME
from outrider.http.models import NAME_PATTERN, ErrorBody, Option, Uri
from outrider.lifecycle.arguments import MAX_FLAG_VALUE

# Kubernetes names and UIDs are at most 253 characters; AIBrix's controller fills claim_ref with them.
MAX_K8S = 253
# An operation id is the controller's own (a UID plus a generation in AIBrix's); a bound keeps records small.
MAX_OPERATION_ID = 256
# kvcached's segment name is a file name in /dev/shm.
MAX_IPC_NAME = 200

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
OperationId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_OPERATION_ID)]
K8sText = Annotated[str, StringConstraints(max_length=MAX_K8S)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=64)]
FlagValue = Annotated[str, StringConstraints(max_length=MAX_FLAG_VALUE)]
Phase = Literal["booting", "active", "sleeping", "stopping", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EngineConfig(_Strict):
    """Engine start-up options: flags from the engine's allowed list, values as strings ("" for a switch)."""

    args: dict[Key, FlagValue] | None = Field(
        default=None, max_length=64, examples=[{"--max-model-len": "2048", "--enforce-eager": ""}]
    )


class ClaimRef(_Strict):
    """The ModelClaim that owns the engine (echoed in the snapshot)."""

    namespace: K8sText
    name: K8sText
    uid: K8sText


class ActivateRequest(_Strict):
    """Bring a model online as its own engine process: fetch `artifact_url`, launch, wait for /health."""

    model_name: ModelName = Field(examples=["qwen3-0.6b"])
    artifact_url: Uri = Field(examples=["s3://bucket/models/qwen3-0.6b", "pvc://models/qwen3-0.6b"])
    engine: Literal["vllm", "sglang"] = "vllm"
    port: int = Field(default=0, ge=0, le=65535, description="0: the first free port of the engine port range")
    ipc_name: Annotated[str, StringConstraints(max_length=MAX_IPC_NAME)] | None = Field(
        default=None, description="kvcached KVCACHED_IPC_NAME; default kvc_<model_name>"
    )
    credentials: dict[Key, Option] | None = Field(
        default=None,
        max_length=16,
        description="Store credentials for the artifact (access_key, secret_key, endpoint, hf_token, ... or their "
        "AWS_* / HF_* names); never echoed",
        examples=[{"access_key": "<access-key>", "secret_key": "<secret-key>"}],
    )
    engine_config: EngineConfig | None = None
    claim_ref: ClaimRef | None = None
    additional_config: dict[Key, FlagValue] | None = Field(
        default=None, max_length=64, description="Legacy: engine flags as `engine-arg:<flag>` keys; others ignored"
    )


class DeactivateRequest(_Strict):
    model_name: ModelName
    # AIBrix's runtime takes any mode and stops (its own unit test sends "pause"): so does outrider.
    mode: Annotated[str, StringConstraints(max_length=64)] = Field(
        default="stop", description='Any mode stops the engine, as in AIBrix ("pause" too)', examples=["stop"]
    )


class SleepRequest(_Strict):
    model_name: ModelName
    level: int = Field(ge=1, le=2)
    operation_id: OperationId


class WakeRequest(_Strict):
    model_name: ModelName
    operation_id: OperationId


class KVLimitRequest(_Strict):
    model_name: ModelName
    limit_bytes: int = Field(ge=0, le=2**63 - 1)
    operation_id: OperationId


class ActivateAnswer(BaseModel):
    status: Literal["success"]
    model_name: str
    port: int
    ipc_name: str
    message: str | None = Field(default=None, description="Set when the engine is still starting")


class DeactivateAnswer(BaseModel):
    status: Literal["success"]
    message: str | None = Field(default=None, description="Set when the model was not active")


class OperationAnswer(BaseModel):
    """The result of an idempotent operation; a repeated operation_id answers the first result, applied false."""

    status: Literal["success"]
    model_name: str
    operation_id: str
    applied: bool
    phase: Phase


class RuntimeFailure(ErrorBody):
    """An error, in AIBrix's fields and outrider's."""

    status: Literal["error"]
    message: str
    model_name: str | None = None
    port: int | None = Field(default=None, description="activate only: 0")
    ipc_name: str | None = Field(default=None, description='activate only: ""')


class RuntimeModelInfo(BaseModel):
    model_name: str
    port: int
    ipc_name: str
    phase: Phase
    ready: bool
    kv_used_bytes: int = Field(description="0 without a kvcached segment")
    kv_total_bytes: int = Field(description="0 without a kvcached segment")


class RuntimeModelList(BaseModel):
    models: list[RuntimeModelInfo]


class AcceleratorSnapshot(BaseModel):
    id: str
    hbm_total_bytes: int
    hbm_free_bytes: int
    hbm_usable_bytes: int


class SnapshotModel(BaseModel):
    model_name: str
    artifact_url: str
    claim_ref: ClaimRef | None
    port: int
    ipc_name: str
    phase: Phase
    ready: bool
    alive: bool
    restart_count: int
    last_error: str | None
    last_transition: str | None
    kv_used_bytes: int = Field(description="-1 without a kvcached segment (unknown)")
    kv_capacity_bytes: int = Field(description="-1 without a kvcached segment (unknown)")
    hbm_peak_bytes: int = Field(description="-1: outrider does not measure GPU memory")
    sleeping_footprint_bytes: int | None
    request_metrics_observed: bool
    requests_running: int
    requests_waiting: int
    request_success_total: int | None


class Snapshot(BaseModel):
    """The runtime's state for the controller's placement."""

    observed_at: str = Field(examples=["2026-12-01T12:00:00.000000+00:00"])
    accelerators: list[AcceleratorSnapshot] = Field(description="Empty: outrider does not observe GPUs")
    models: list[SnapshotModel]
    cached_artifacts: list[str]
