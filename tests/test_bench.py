"""Smoke test of the benchmark harness: it starts servers, drives them with wrk and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, require_tool

pytestmark = pytest.mark.slow


def test_the_bench_harness_runs_for_a_second(tmp_path: Path) -> None:
    require_tool("wrk", "apt-get install -y wrk")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--duration",
            "1",
            "--connections",
            "1,4",
            "--only",
            "service,fast_echo,asgi_echo",
            "--workloads",
            "json1,bin4096,v2bin1,v2json1,v1json1",
            "--output",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["server"], r["workload"], r["connections"]): r for r in report["results"]}
    assert set(rows) == {(s, "json1", c) for s in ("service", "fast_echo", "asgi_echo") for c in (1, 4)} | {
        ("service", w, c) for w in ("bin4096", "v2bin1", "v2json1", "v1json1") for c in (1, 4)
    }
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["non_2xx"] == 0 for r in rows.values())
    assert rows[("service", "bin4096", 1)]["images_per_s"] > 1000
    assert "json1@64 service / fast_echo (target >= 0.8)" not in report["ratios"]  # no 64-connection run here
    assert report["service_start_to_ready_s"] > 0 and report["service_peak_rss_mb"] > 0
    assert (tmp_path / "chart.png").stat().st_size > 0
    assert "service" in result.stdout and "req/s" in result.stdout
