"""The real server under concurrent traffic while training jobs publish, a corrupt version is promoted,
and an operator rolls back: not one failed request, and readiness never leaves 200; with one worker and
with two (WORKERS=2), for the refresh and for a graceful stop alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from bench.attacks import free_port
from core.store import MODEL_FILE, ONNX_FILE
from tests.helpers import REPO, cli, republish, status_of, wait_until

pytestmark = pytest.mark.slow
CONNECTIONS = 16
BODY = {"instances": [[0] * 784]}


@dataclass
class Traffic:
    base_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    # Per connection: (finished at, status, version) for every request, in the order it sent them.
    results: list[list[tuple[float, int, int | None]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    readiness: list[int] = field(default_factory=list)

    def client(self, index: int) -> None:
        log = self.results[index]
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/predict", json=BODY)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                log.append((time.time(), response.status_code, version))
                self.stop.wait(0.005)  # bounded load: leave CPU for the training jobs

    def probe_readiness(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            while not self.stop.is_set():
                self.readiness.append(http.get("/health/ready").status_code)
                self.stop.wait(0.05)

    def seen_since(self, version: int, since: float) -> float | None:
        times = [t for log in self.results for t, _, v in log if v == version and t >= since]
        return min(times) if times else None


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
def server(store_copy: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "MODEL_STORE": str(store_copy),
        "PORT": str(port),
        "POLL_INTERVAL_S": "0.2",
        "LOG_LEVEL": "warning",
        "WORKERS": str(request.param),
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status_of(f"{base_url}/health/ready") == 200, timeout_s=30)
        yield base_url
    finally:
        process.terminate()
        # uvicorn finishes in-flight requests, then re-raises SIGTERM so the exit status reports it.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def promoted_at(store: Path) -> float:
    pointer = json.loads((store / "fashion-mnist" / "current.json").read_text())
    return datetime.fromisoformat(pointer["promoted_at"]).timestamp()


def test_versions_switch_under_load_without_a_failed_request(
    server: str, store_copy: Path, synthetic_data_dir: Path
) -> None:
    traffic = Traffic(server, results=[[] for _ in range(CONNECTIONS)])
    threads = [threading.Thread(target=traffic.client, args=(i,)) for i in range(CONNECTIONS)]
    threads.append(threading.Thread(target=traffic.probe_readiness))
    for thread in threads:
        thread.start()
    swaps: dict[str, float] = {}

    def switch_to(version: int, label: str) -> None:
        since = promoted_at(store_copy)
        wait_until(lambda: traffic.seen_since(version, since) is not None, timeout_s=30)
        swaps[label] = traffic.seen_since(version, since) - since  # type: ignore[operator]

    try:
        wait_until(lambda: sum(map(len, traffic.results)) > 100)
        for version in (2, 3):
            cli(
                "train",
                "--store",
                store_copy,
                "--data-dir",
                synthetic_data_dir,
                "--promote",
                "always",
                "--epochs",
                "1",
                "--max-train-samples",
                "200",
                "--validation-size",
                "100",
                "--hidden-units",
                "16",
                "--no-flip",
            )
            switch_to(version, f"train -> v{version}")
        corrupt = republish(store_copy, corrupt=ONNX_FILE)
        (store_copy / "fashion-mnist" / str(corrupt) / MODEL_FILE).write_bytes(b"\x00corrupt")
        failures_before = _reload_failures(server)
        cli("promote", str(corrupt), "--store", store_copy)
        wait_until(lambda: _reload_failures(server) > failures_before, timeout_s=30)
        cli("promote", "1", "--store", store_copy)
        switch_to(1, "rollback -> v1")
        time.sleep(0.3)  # some traffic on the rolled-back version
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=30)

    responses = [entry for log in traffic.results for entry in log]
    statuses = {status for _, status, _ in responses}
    print(
        f"\n{len(responses)} requests over {CONNECTIONS} connections; swap latencies: "
        + ", ".join(f"{label} {seconds * 1000:.0f} ms" for label, seconds in swaps.items())
    )
    assert traffic.errors == []
    assert statuses == {200}
    assert set(traffic.readiness) == {200}
    assert corrupt not in {version for _, _, version in responses}
    for log in traffic.results:
        sequence = [version for _, _, version in log]
        collapsed = [v for i, v in enumerate(sequence) if i == 0 or v != sequence[i - 1]]
        assert collapsed == [1, 2, 3, 1]


def _reload_failures(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith('model_reloads_total{model="fashion-mnist",outcome="failure"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_an_in_flight_request_finish(store_copy: Path, workers: int) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MODEL_STORE": str(store_copy),
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "WORKERS": str(workers),
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status_of(f"{base_url}/health/ready") == 200, timeout_s=30)
        resume = threading.Event()
        pixels = bytes(784 * 64)

        def slow_body() -> Iterator[bytes]:
            yield pixels[: 784 * 8]
            resume.wait(timeout=30)  # the rest arrives only after the server was told to stop
            yield pixels[784 * 8 :]

        outcome: dict[str, httpx.Response] = {}
        headers = {"content-type": "application/octet-stream", "content-length": str(len(pixels))}
        upload = threading.Thread(
            target=lambda: outcome.setdefault(
                "response",
                httpx.post(f"{base_url}/predict", content=slow_body(), headers=headers, timeout=30),
            )
        )
        upload.start()
        wait_until(lambda: "http_requests_in_flight 2.0" in httpx.get(f"{base_url}/metrics").text)
        process.send_signal(signal.SIGTERM)
        resume.set()
        upload.join(timeout=30)
        assert outcome["response"].status_code == 200
        assert len(outcome["response"].json()["predictions"]) == 64
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        process.kill()
        process.wait()
