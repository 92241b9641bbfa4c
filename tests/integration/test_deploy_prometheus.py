"""deploy/prometheus: promtool accepts the scrape config and the rules, and the rules compute what their names say.

Debian's `prometheus` package (our promtool) is built without Kubernetes service discovery, so its promtool rejects
`kubernetes_sd_configs` outright ("field kubernetes_sd_configs not found"). When that is so, the config is checked
with each Kubernetes SD block swapped for a static target and every other line unchanged, and the SD block itself is
checked here against the fields and meta labels Prometheus documents for the pod role.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "outrider-rules.yml"

# Meta labels Prometheus's Kubernetes SD sets for role: pod (from its configuration reference), the ones we may use.
POD_META_LABELS = {
    "__meta_kubernetes_namespace",
    "__meta_kubernetes_pod_name",
    "__meta_kubernetes_pod_ip",
    "__meta_kubernetes_pod_container_name",
    "__meta_kubernetes_pod_container_port_name",
    "__meta_kubernetes_pod_container_port_number",
    "__meta_kubernetes_pod_container_port_protocol",
    "__meta_kubernetes_pod_ready",
    "__meta_kubernetes_pod_phase",
    "__meta_kubernetes_pod_node_name",
    "__meta_kubernetes_pod_controller_kind",
    "__meta_kubernetes_pod_controller_name",
}
KUBERNETES_SD_FIELDS = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Debian's `prometheus` package (noxfile does this)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def promtool_has_kubernetes_sd(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text("scrape_configs:\n  - job_name: p\n    kubernetes_sd_configs: [{role: pod}]\n")
    done = promtool("check", "config", str(probe))
    if done.returncode == 0:
        return True
    assert "kubernetes_sd_configs not found" in done.stdout + done.stderr, done.stdout + done.stderr
    return False


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_rules_pass_promtool() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = load(CONFIG)
    if not promtool_has_kubernetes_sd(tmp_path):
        config = copy.deepcopy(config)
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:9000"]}]
    # Beside a copy of the rules, so promtool also loads the rule_files the config names.
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(RULES, tmp_path / RULES.name)
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout  # the rule file was found and read


def test_kubernetes_sd_block_keeps_only_outrider_ports() -> None:
    (job,) = load(CONFIG)["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and set(sd) <= KUBERNETES_SD_FIELDS
    relabel = job["relabel_configs"]
    for rule in relabel:
        assert set(rule.get("source_labels", [])) <= POD_META_LABELS, rule
    keep = [r for r in relabel if r.get("action") == "keep"]
    assert keep == [
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "outrider", "action": "keep"}
    ]
    # The port name it keeps is the one the Deployment gives outrider, and the labels are the ones the dashboard uses.
    deployment = yaml.safe_load((REPO / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == "outrider")
    assert [p["name"] for p in sidecar["ports"]] == ["outrider"]
    assert {"namespace", "pod"} <= {r.get("target_label") for r in relabel}
    assert job["metrics_path"] == "/metrics"


RULE_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 10 requests a minute, every one with a first token between 0.1 s and 0.5 s, in two pods of one model.
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="a", le="0.1"}}'
        values: '0+0x20'
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="a", le="0.5"}}'
        values: '0+5x20'
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="a", le="+Inf"}}'
        values: '0+5x20'
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="b", le="0.1"}}'
        values: '0+0x20'
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="b", le="0.5"}}'
        values: '0+5x20'
      - series: 'outrider:time_to_first_token_seconds_bucket{{namespace="ns", model_name="m", pod="b", le="+Inf"}}'
        values: '0+5x20'
      - series: 'outrider:generation_tokens_total{{namespace="ns", model_name="m", pod="a"}}'
        values: '0+600x20'
    # Compared with a tolerance: promtool 2.42 wants exact floats, and interpolation leaves the last bit to chance.
    promql_expr_test:
      - expr: abs(namespace_model_name:outrider_time_to_first_token_seconds:p50_rate5m - 0.3) < bool 1e-9
        eval_time: 10m
        exp_samples:
          - labels: '{{namespace="ns", model_name="m"}}'
            value: 1
      - expr: abs(namespace_model_name:outrider_time_to_first_token_seconds:p99_rate5m - 0.496) < bool 1e-9
        eval_time: 10m
        exp_samples:
          - labels: '{{namespace="ns", model_name="m"}}'
            value: 1
      - expr: abs(namespace_model_name:outrider_generation_tokens:rate5m - 10) < bool 1e-9
        eval_time: 10m
        exp_samples:
          - labels: '{{namespace="ns", model_name="m"}}'
            value: 1
"""


@pytest.mark.parametrize(("rules_text", "passes"), [(None, True), ("0.99,", False)])
def test_recording_rules_compute_the_quantiles(tmp_path: Path, rules_text: str | None, passes: bool) -> None:
    rules = RULES
    if rules_text is not None:  # a rule with the wrong quantile must fail the same test
        rules = tmp_path / "broken-rules.yml"
        rules.write_text(RULES.read_text().replace("histogram_quantile(0.5,", "histogram_quantile(0.99,"))
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(RULE_TESTS.format(rules=rules))
    done = promtool("test", "rules", str(test_file))
    assert (done.returncode == 0) is passes, done.stdout + done.stderr
