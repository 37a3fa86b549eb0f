"""WORKERS=2: two worker processes on one port behave as one server. /metrics counts every request once
and shows every worker, readiness waits for all of them, a worker that dies is replaced, and the
supervisor stops them all cleanly. (Shutdown and the zero-downtime refresh with two workers are in
tests/test_zero_downtime.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.attacks import free_port
from service.workers import WorkerGroup
from tests.helpers import REPO, status_of, synthetic_images, wait_until

pytestmark = pytest.mark.slow
BODY = {"instances": synthetic_images(np.array([3])).tolist()}


def start(store: Path, workers: int, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {
        **os.environ,
        "MODEL_STORE": str(store),
        "PORT": str(port),
        "WORKERS": str(workers),
        "LOG_LEVEL": "warning",
        **env,
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=environment)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: status_of(f"{url}/health/ready") == 200, timeout_s=60)
    return process, url


@pytest.fixture
def two_workers(store_copy: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, url = start(store_copy, 2)
    try:
        yield process, url
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0  # the supervisor stops both workers and exits cleanly


def test_metrics_count_every_request_once_and_show_every_worker(
    two_workers: tuple[subprocess.Popen[bytes], str],
) -> None:
    _, url = two_workers
    per_client, clients = 40, 8

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(per_client):
                assert http.post("/predict", json=BODY).status_code == 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for _ in range(3):  # whichever worker answers the scrape, the sums are the same
        metrics = httpx.get(f"{url}/metrics").text
        assert _value(metrics, 'http_requests_total{method="POST",route="/predict",status="200"}') == 320
        assert _value(metrics, 'model_prediction_confidence_count{model="fashion-mnist"}') == 320
        assert _value(metrics, 'model_predictions_total{class_name="Dress",model="fashion-mnist"}') <= 320
    # One served version per worker, each in its own series.
    assert len(set(re.findall(r'^model_info\{.*pid="(\d+)".*\} 1\.0$', metrics, re.M))) == 2
    stats = httpx.get(f"{url}/stats").json()
    assert stats["requests"] == 320 and stats["latency"]["count"] == 320


def test_readiness_waits_for_every_worker_and_a_dead_worker_is_replaced(
    two_workers: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = two_workers
    workers = _children(process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    # Hold the replacement before it has loaded anything, so that readiness has to come from the other
    # worker: it must say that not every worker is ready. (Polls the kernel gives to the held worker's
    # socket time out; they are skipped.)
    wait_until(lambda: len(set(_children(process.pid)) - set(workers)) == 1, timeout_s=10, interval_s=0.005)
    (replacement,) = set(_children(process.pid)) - set(workers)
    os.kill(replacement, signal.SIGSTOP)
    refusals: list[str] = []

    def refused_by_the_other_worker() -> bool:
        try:
            response = httpx.get(f"{url}/health/ready", timeout=0.5)
        except httpx.TimeoutException:
            return False
        if response.status_code == 503:
            refusals.append(response.json()["error"]["message"])
        return bool(refusals)

    try:
        wait_until(refused_by_the_other_worker, timeout_s=20)
    finally:
        os.kill(replacement, signal.SIGCONT)
    assert refusals == ["1 of 2 workers have loaded their models"]
    wait_until(lambda: status_of(f"{url}/health/ready") == 200, timeout_s=60)
    replaced = _children(process.pid)
    assert len(replaced) == 2 and workers[0] not in replaced and workers[1] in replaced
    # The dead worker's series are gone; its counts are kept (counters never go back).
    metrics = httpx.get(f"{url}/metrics").text
    pids = set(re.findall(r'^model_info\{.*pid="(\d+)".*\} 1\.0$', metrics, re.M))
    assert pids == {str(pid) for pid in replaced}


def test_runtime_loading_is_refused_with_several_workers(store_copy: Path) -> None:
    process, url = start(store_copy, 2, API_KEY="k")
    try:
        response = httpx.post(
            f"{url}/v2/repository/models/fashion-mnist/load", headers={"Authorization": "Bearer k"}
        )
        assert response.status_code == 409 and "MODELS" in response.json()["error"]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _value(metrics: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def test_only_live_workers_markers_count_and_a_stray_file_breaks_nothing(tmp_path: Path) -> None:
    # A file of another name in the shared folder made /health/ready answer 500.
    for name in (f"ready-{os.getpid()}", "ready-x", "ready-", "ready-99999999999999999999", "ready-0012"):
        (tmp_path / name).touch()
    assert WorkerGroup(tmp_path, size=2).ready_count() == 1
