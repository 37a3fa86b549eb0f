"""What operators deploy beside the service, checked with the real tools: Prometheus scrape configuration,
recording rules and alerts (promtool, against the service's real metrics), the Kubernetes manifests
(kubectl kustomize, kubernetes-validate, checkov), the compose file (docker-compose), the nginx
configuration (nginx -t) and the Grafana dashboard. tests/test_fleet.py runs them together."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from tests.helpers import REPO, require_tool, synthetic_images

DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
KUBERNETES = DEPLOY / "kubernetes"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(require_tool("promtool", "apt-get install -y prometheus"), *args, cwd=PROMETHEUS, stdin=stdin)


def run(*command: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300)


def test_the_configuration_and_rules_are_valid() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "rules.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_when_it_should_and_only_then() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"^\s+- alert: (\w+)", (PROMETHEUS / "rules.yml").read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "rules.test.yml").read_text()))
    assert alerts and alerts == tested


def test_the_rules_use_metrics_the_service_exposes_and_pass_promtools_lint(client: TestClient) -> None:
    client.post("/predict", json={"instances": synthetic_images(np.array([1, 2])).tolist()})
    client.post("/predict", json={"instances": [[999] * 784]})  # a 422, so the request series exist
    exposition = client.get("/metrics").text
    lint = promtool("check", "metrics", stdin=exposition)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    exposed = set(re.findall(r"^([a-z_][a-z0-9_]*)", exposition, re.M))
    rules = (PROMETHEUS / "rules.yml").read_text()
    expressions = " ".join(re.findall(r"expr: (.+)", rules))
    # Metric names, not the recording rules' level:name:operation names.
    used = set(re.findall(r"(?<![:\w])((?:http|model)_[a-z0-9_]+)(?![:\w])", expressions))
    assert "model_queue_capacity_images" in used
    assert used, "no metric names found in the rules"
    assert used <= exposed, f"the rules use metrics the service does not expose: {sorted(used - exposed)}"


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "kubectl with kustomize, preinstalled on these machines")
    rendered = run(kubectl, "kustomize", str(KUBERNETES / overlay))
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def by_kind(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        kinds.setdefault(document["kind"], []).append(document)
    return kinds


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_the_kubernetes_manifests_render_and_pass_strict_schema_validation(
    overlay: str, tmp_path: Path
) -> None:
    documents = kustomize(overlay)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(documents))
    validate = require_tool("kubernetes-validate", "make deploy-tools")
    result = run(validate, "--strict", "--kubernetes-version", "1.32.0", str(rendered))
    # The Prometheus Operator's CRDs have no bundled schema: they are checked by the tests below instead.
    unchecked = re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)
    assert set(unchecked) <= {"PodMonitor", "PrometheusRule"}, result.stdout + result.stderr
    assert not re.search(r"^(ERROR|CRITICAL)", result.stdout + result.stderr, re.M), (
        result.stdout + result.stderr
    )
    assert result.stdout.count(" passed for resource ") == len(documents) - len(unchecked)


def test_the_deployment_probes_health_runs_locked_down_and_shares_the_store() -> None:
    kinds = by_kind(kustomize("base"))
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert server["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    for container in (*pod["containers"], *pod["initContainers"]):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(
            container["resources"]["limits"]
        )
    # SIGTERM gives in-flight requests GRACEFUL_TIMEOUT_S (8 s); the pod must be allowed more than that.
    assert pod["terminationGracePeriodSeconds"] > 8
    claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    (store,) = [claim for claim in kinds["PersistentVolumeClaim"] if claim["metadata"]["name"] in claims]
    assert store["spec"]["accessModes"] == ["ReadWriteMany"]

    (job,) = kinds["CronJob"]
    trainer = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (train,) = trainer["containers"]
    assert train["image"].endswith(":train")
    assert train["command"][:4] == ["python", "-m", "training", "train"]
    assert train["command"][train["command"].index("--promote") + 1] == "if-better"
    assert {
        v["persistentVolumeClaim"]["claimName"] for v in trainer["volumes"] if "persistentVolumeClaim" in v
    } >= claims

    (autoscaler,) = kinds["HorizontalPodAutoscaler"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    (budget,) = kinds["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (budget["spec"]["selector"]["matchLabels"], kinds["Service"][0]["spec"]["selector"]):
        assert selector.items() <= labels.items()


def test_the_monitoring_component_scrapes_each_pod_and_carries_the_same_rules() -> None:
    kinds = by_kind(kustomize("production"))
    (deployment,) = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    (monitor,) = kinds["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # The job label the rules and the dashboard use.
    assert pod["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "fashion-serving"
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]


def test_checkov_finds_no_unjustified_failure_in_the_dockerfile_and_manifests() -> None:
    checkov = require_tool("checkov", "make deploy-tools")
    for target in (
        ["-f", "Dockerfile", "--framework", "dockerfile"],
        ["-d", "deploy/kubernetes", "--framework", "kubernetes", "kustomize"],
    ):
        result = run(checkov, "--compact", "--skip-download", "--output", "json", *target)
        reports = json.loads(result.stdout)
        for report in reports if isinstance(reports, list) else [reports]:
            assert report["summary"]["failed"] == 0 and report["summary"]["passed"] > 0, json.dumps(
                report["results"]["failed_checks"], indent=1
            )[:4000]
            for skipped in report["results"]["skipped_checks"]:
                assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]


def test_the_compose_file_runs_replicas_nginx_prometheus_and_training_on_one_store() -> None:
    compose = require_tool("docker-compose", "apt-get install -y docker-compose")
    result = run(compose, "-f", str(DEPLOY / "compose.yaml"), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["serve"]["deploy"]["replicas"] >= 2
    assert services["serve"]["build"]["target"] == "serve" and services["train"]["build"]["target"] == "train"
    store_of = {
        name: {v.split(":")[0] for v in service.get("volumes", [])} for name, service in services.items()
    }
    assert "store" in store_of["serve"] & store_of["train"]
    assert {"nginx", "prometheus"} <= set(services)


def test_the_nginx_configuration_is_valid_for_nginx(tmp_path: Path) -> None:
    nginx = require_tool("nginx", "apt-get install -y nginx")
    (tmp_path / "conf.d").mkdir()
    for name in ("fashion-serving.conf", "replicas.upstream"):
        text = (DEPLOY / "nginx" / name).read_text()
        (tmp_path / "conf.d" / name).write_text(text.replace("serve:8000", "127.0.0.1:8000"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path};\n"
        "include conf.d/fashion-serving.conf; }\n"
    )
    result = run(nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"))
    assert result.returncode == 0, result.stderr


def test_every_dashboard_panel_has_a_query_on_metrics_the_service_exposes(client: TestClient) -> None:
    client.post("/predict", json={"instances": synthetic_images(np.array([1])).tolist()})
    # Every series a family can have, from its TYPE line: a counter nobody incremented yet has no sample.
    suffixes = {"histogram": ["_bucket", "_sum", "_count"]}
    families = re.findall(r"^# TYPE (\w+) (\w+)$", client.get("/metrics").text, re.M)
    exposed = {name + suffix for name, kind in families for suffix in suffixes.get(kind, [""])} | {"up"}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\b((?:http|model)_[a-z0-9_]+|up)\{", target["expr"]))
            assert used and used <= exposed, (panel["title"], used - exposed)
