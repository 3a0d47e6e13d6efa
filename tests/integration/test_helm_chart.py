"""The Helm chart (deploy/helm/gputuned) rendered by the real `helm` with default and other
values: every Kubernetes object validates against the API's published OpenAPI schemas
(kubernetes-validate, strict: an unknown field fails), the Prometheus Operator's against its
CRDs' schemas (as @kubernetes-models/prometheus-operator compiles them, run with node), and what
it renders is what gputuned needs: its config valid, the host read-only, no capabilities."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gputuned.config import config_from_mapping
from gputuned.testing.processes import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "gputuned"
CRD_CHECK = REPO_ROOT / "tests" / "k8s" / "validate_crds.mjs"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest supported upstream when written, and the newest schemas
OTHER_VALUES = """
serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}}
podMonitor: {enabled: true}
prometheusRule: {enabled: true, labels: {release: kube-prometheus-stack}}
podAttribution: {enabled: false}
hostPID: true
runtimeClassName: nvidia
priorityClassName: system-node-critical
resources: {requests: {cpu: 50m, memory: 96Mi}, limits: {cpu: "1", memory: 256Mi}}
updateStrategy: {maxUnavailable: 2}
config: |
  [metrics]
  listen = "0.0.0.0:9842"

  [sampling]
  interval_seconds = 2.0
"""


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed; scripts/setup.sh --test installs it")
    return path


def render(tmp_path: Path, values: str = "", *sets: str) -> list[dict]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(values)
    command = [tool("helm"), "template", "gpu", str(CHART), "--namespace", "monitoring", "-f", str(values_file)]
    for setting in sets:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


def validate_core(objects: list[dict]) -> list[str]:
    problems = []
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(
                    f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}"
                )
    return problems


def validate_crds(objects: list[dict]) -> subprocess.CompletedProcess:
    if not (CRD_CHECK.parent / "node_modules").is_dir():
        pytest.fail("tests/k8s/node_modules is missing; scripts/setup.sh --test runs npm ci there")
    monitors = [obj for obj in objects if obj["apiVersion"].startswith("monitoring.coreos.com")]
    return subprocess.run([tool("node"), str(CRD_CHECK)], input=json.dumps(monitors), capture_output=True, text=True, timeout=60)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def test_helm_lint_passes():
    done = subprocess.run([tool("helm"), "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, done.stdout + done.stderr


def test_the_default_chart_is_a_valid_daemonset_on_gpu_nodes_with_the_host_read_only(tmp_path: Path):
    objects = render(tmp_path)
    assert sorted(obj["kind"] for obj in objects) == ["ConfigMap"] * 4 + ["DaemonSet", "Service"]
    assert validate_core(objects) == []
    (daemonset,) = by_kind(objects, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["runAsUser"] == 0 and pod["hostPID"] is False  # the kubelet socket is root's
    assert pod["automountServiceAccountToken"] is False
    host_paths = {volume["name"]: volume["hostPath"]["path"] for volume in pod["volumes"] if "hostPath" in volume}
    assert host_paths == {
        "host-proc": "/proc",
        "host-sys": "/sys",
        "pod-resources": "/var/lib/kubelet/pod-resources",
        "pod-logs": "/var/log/pods",
    }
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert all(mounts[name].get("readOnly") for name in [*host_paths, "config"])
    assert container["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"cpu": "250m", "memory": "192Mi"}}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9842, "protocol": "TCP"}]

    config_map = next(obj for obj in by_kind(objects, "ConfigMap") if "gputuned.toml" in obj["data"])
    config = config_from_mapping(tomllib.loads(config_map["data"]["gputuned.toml"]))
    assert (config.paths.proc_root, config.paths.sys_root, config.collectors.kubelet) == ("/host/proc", "/host/sys", True)
    assert config.metrics.listen == "0.0.0.0:9842"
    assert container["args"] == ["run", "--no-worker", "--config", "/etc/gputuned/gputuned.toml"]

    dashboards = {
        name: json.loads(text)
        for obj in by_kind(objects, "ConfigMap")
        for name, text in obj["data"].items()
        if name.endswith(".json")
    }
    assert dashboards == {path.name: json.loads(path.read_text()) for path in (REPO_ROOT / "dashboards").glob("*.json")}
    assert all(
        obj["metadata"]["labels"].get("grafana_dashboard") == "1"
        for obj in by_kind(objects, "ConfigMap")
        if "gputuned.toml" not in obj["data"]
    )


def test_other_values_render_valid_monitors_rules_and_an_unprivileged_pod(tmp_path: Path):
    objects = render(tmp_path, OTHER_VALUES)
    assert validate_core(objects) == []
    checked = validate_crds(objects)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(checked.stdout.split("\n")[:-1]) == [
        "ok PodMonitor gpu-gputuned",
        "ok PrometheusRule gpu-gputuned",
        "ok ServiceMonitor gpu-gputuned",
    ]

    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "gputuned-rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod = by_kind(objects, "DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65534 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["hostPID"] is True and pod["runtimeClassName"] == "nvidia"
    assert {volume["name"] for volume in pod["volumes"]} == {"config", "host-proc", "host-sys", "run", "state"}
    config_map = next(obj for obj in by_kind(objects, "ConfigMap") if "gputuned.toml" in obj["data"])
    config = config_from_mapping(tomllib.loads(config_map["data"]["gputuned.toml"]))
    assert config.collectors.kubelet is False and config.sampling.interval_seconds == 2.0


def test_the_checks_catch_an_invalid_object(tmp_path: Path):
    objects = render(tmp_path, OTHER_VALUES, "port=metrics", "serviceMonitor.interval=often")
    assert any("containerPort" in problem for problem in validate_core(objects))
    checked = validate_crds(objects)
    assert checked.returncode == 1 and "invalid ServiceMonitor gpu-gputuned: data/spec/endpoints/0/interval" in checked.stdout
