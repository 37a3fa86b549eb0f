"""What operators deploy beside the service: Prometheus scrape configuration, recording rules and
alerts (deploy/prometheus), checked with the real promtool against the service's real metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import REPO, synthetic_images

PROMETHEUS = REPO / "deploy" / "prometheus"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing under CI: .ci/run must apt-get install prometheus")
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, input=stdin, capture_output=True, text=True, timeout=60
    )


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
