"""The `gie` overlay (deploy/kubernetes/overlays/gie), rendered by a real kustomize and validated offline.

Built-in kinds are validated as in test_deploy_kubernetes.py (kubernetes-validate's OpenAPI schemas, strict). The
InferencePool is a CRD that kubernetes-validate does not carry, so it gets a structural schema written here from
the fields GIE's `inference.networking.k8s.io/v1` API defines for what the overlay uses (docs/engines.md §7):
required `spec.selector.matchLabels` and `spec.targetPorts[].number`, optional `spec.endpointPickerRef`
{group, kind, name, port.number, failureMode}; unknown fields fail. Then what no schema can check: the pool selects
the pods and targets the engine's port, the picker's config scrapes outrider's port, the pod carries the engine-type
label, and the sidecar runs with the gie profile on outrider's own command line.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from outrider.cli import build_parser
from outrider.http.app import route_paths
from outrider.metrics.concepts import PROFILES
from outrider.service import build_runtime
from outrider.settings import Settings
from tests.integration.test_deploy_kubernetes import (
    BASE,
    KUBERNETES_VERSIONS,
    KUSTOMIZE,
    SERVICE_MONITOR_SCHEMA,
    container,
    kubectl,
    one,
    port_number,
    render,
    selects,
)

GIE = KUSTOMIZE / "overlays" / "gie"
ENGINE_TYPE_LABEL = "llm-d.ai/engine-type"

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
INFERENCE_POOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "inference.networking.k8s.io/v1"},
        "kind": {"const": "InferencePool"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": _NAME},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "targetPorts"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {"matchLabels": {**_LABELS, "minProperties": 1}},
                },
                "targetPorts": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["number"],
                        "additionalProperties": False,
                        "properties": {"number": _PORT},
                    },
                },
                "endpointPickerRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"const": "Service"},
                        "name": {"type": "string", "pattern": _NAME},
                        "port": {
                            "type": "object",
                            "required": ["number"],
                            "additionalProperties": False,
                            "properties": {"number": _PORT},
                        },
                        "failureMode": {"enum": ["FailOpen", "FailClose"]},
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(GIE)


def config_map(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return found


def picker_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(config_map(docs, "llm-server-epp-config")["data"]["config.yaml"])
    return config


def test_every_resource_of_the_gie_overlay_passes_its_schema(docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "InferencePool", "Service", "ServiceMonitor"]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(doc)
        elif doc["kind"] == "InferencePool":
            jsonschema.Draft202012Validator(INFERENCE_POOL_SCHEMA).validate(doc)
        else:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        "old_api_version",
        "no_target_ports",
        "port_as_string",
        "selector_without_match_labels",
        "misspelled_field",
        "unknown_failure_mode",
    ],
)
def test_inference_pool_schema_catches_broken_pools(docs: list[dict[str, Any]], breakage: str) -> None:
    pool = copy.deepcopy(one(docs, "InferencePool"))
    jsonschema.Draft202012Validator(INFERENCE_POOL_SCHEMA).validate(pool)  # as rendered: valid
    spec = pool["spec"]
    if breakage == "old_api_version":
        pool["apiVersion"] = "inference.networking.x-k8s.io/v1alpha2"  # gone since GIE v1.5.0
    elif breakage == "no_target_ports":
        del spec["targetPorts"]
    elif breakage == "port_as_string":
        spec["targetPorts"][0]["number"] = "8000"
    elif breakage == "selector_without_match_labels":
        spec["selector"] = {"app.kubernetes.io/name": "llm-server"}  # the v1alpha2 shape
    elif breakage == "misspelled_field":
        spec["targetPort"] = spec.pop("targetPorts")
    else:
        spec["endpointPickerRef"]["failureMode"] = "Fail"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(INFERENCE_POOL_SCHEMA).validate(pool)


def test_the_pool_routes_to_the_engine_and_the_picker_reads_outrider(docs: list[dict[str, Any]]) -> None:
    pool, deployment = one(docs, "InferencePool"), one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    engine, sidecar = container(deployment, "engine"), container(deployment, "outrider")
    assert selects(pool["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    # Requests go to the engine's OpenAI port; the picker's metrics come from outrider's port on the same pod.
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [port_number(engine, "http")]
    sources = [p for p in picker_config(docs)["plugins"] if p["type"] == "metrics-data-source"]
    assert len(sources) == 1
    assert sources[0]["parameters"]["port"] == port_number(sidecar, "outrider")
    assert sources[0]["parameters"].get("path", "/metrics") == "/metrics"
    assert picker_config(docs)["apiVersion"] == "llm-d.ai/v1alpha1"
    # outrider serves vLLM's spelling, which is what the picker reads for a pod labelled vllm.
    assert pod["metadata"]["labels"][ENGINE_TYPE_LABEL] == "vllm"


def test_the_sidecar_serves_the_gie_profile(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    args = container(deployment, "outrider")["args"]
    build_parser().parse_args(args)  # an unknown flag would exit here
    profiles = tuple(p.strip() for p in args[args.index("--metrics-profile") + 1].split(","))
    assert profiles == ("outrider", "gie")
    assert set(profiles) <= set(PROFILES)
    # Until settings learns the list from metrics.concepts.PROFILES its parser refuses "gie", so the Settings are
    # built directly here: outrider starts with the profile and serves /metrics.
    settings = Settings(engine="vllm", engine_base_url="http://localhost:8000", metrics_profiles=profiles)
    runtime = build_runtime(settings)
    assert "/metrics" in route_paths(runtime)


def test_the_gie_overlay_changes_only_what_routing_needs(docs: list[dict[str, Any]]) -> None:
    base = render(BASE)
    for kind in ("Service", "ServiceMonitor"):
        assert one(base, kind) == one(docs, kind)
    assert config_map(docs, "outrider-adapters") == one(base, "ConfigMap")
    base_pod = one(base, "Deployment")["spec"]["template"]
    pod = one(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"] == {**base_pod["metadata"]["labels"], ENGINE_TYPE_LABEL: "vllm"}
    base_sidecar, sidecar = base_pod["spec"]["initContainers"][0], pod["spec"]["initContainers"][0]
    assert sidecar["args"] == [*base_sidecar["args"], "--metrics-profile", "outrider,gie"]
    assert {**sidecar, "args": None} == {**base_sidecar, "args": None}
    assert pod["spec"]["containers"][0] == base_pod["spec"]["containers"][0]


def test_the_gie_patch_stops_on_the_wrong_container(tmp_path: Path) -> None:
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, tree)
    overlay = tree / "overlays" / "gie"
    assert render(overlay)  # the copy renders as it is
    patch = overlay / "routable-pod.yaml"
    patch.write_text(patch.read_text().replace("initContainers/0/", "containers/0/"))
    done = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "test" in done.stderr.lower()
