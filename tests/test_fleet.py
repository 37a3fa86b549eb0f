"""A fleet on one machine, built from the real parts an operator deploys: three replicas of the service
sharing one store, Debian's nginx in front with deploy/nginx's configuration, and Prometheus scraping the
replicas with deploy/prometheus' configuration and rules. Under continuous load through nginx, a replica
is SIGKILLed and started again, and a training job publishes and promotes a new version.

It must hold: not one failed request at the client, every replica serving the new version within
POLL_INTERVAL_S plus its load time, Prometheus' request rate within 5 % of what the client sent, and
every panel of deploy/grafana/dashboard.json answering from that Prometheus with data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from bench.attacks import free_port
from tests.helpers import REPO, cli, require_tool, status_of, synthetic_images, wait_until

pytestmark = pytest.mark.slow

REPLICAS = 3
POLL_INTERVAL_S = 1.0
SCRAPE_INTERVAL_S = 1.0
CONNECTIONS = 8
MODEL = "fashion-mnist"
GOOD = [{"instances": [image.tolist()]} for image in synthetic_images(np.arange(10))]
BAD = {"instances": [[999] * 784]}  # pixel values out of range: a 422, a client mistake by design


@dataclass
class Replica:
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=self.env, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def served_version(self) -> int | None:
        try:
            response = httpx.get(f"{self.url}/health/ready", timeout=2)
        except httpx.HTTPError:
            return None
        return int(response.json()["model"]["version"]) if response.status_code == 200 else None

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@dataclass
class Fleet:
    replicas: list[Replica]
    balancer: str
    prometheus: str
    folder: Path

    def query(self, expression: str, at: float) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.prometheus}/api/v1/query", params={"query": expression, "time": at}, timeout=10
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expression, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@dataclass
class Load:
    """Clients posting through nginx until stopped: one image per request, plus a trickle of bad ones."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    sent: list[tuple[float, int]] = field(default_factory=list)  # (answered at, status), all requests
    failures: list[str] = field(default_factory=list)

    def client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            count = 0
            while not self.stop.is_set():
                bad = index == 0 and count % 5 == 4
                body = BAD if bad else GOOD[count % len(GOOD)]
                count += 1
                try:
                    response = http.post("/predict", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.sent.append((time.time(), response.status_code))
                if response.status_code != (422 if bad else 200):
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
                self.stop.wait(0.002)  # bounded: leave CPU for the replicas, nginx and training

    def answered_between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.sent if start < at <= end)


def _nginx_conf(folder: Path, port: int, replicas: list[Replica]) -> Path:
    """deploy/nginx as shipped, its replicas the local ports, and a main file with local paths."""
    conf = folder / "conf.d"
    conf.mkdir(parents=True)
    shipped = (REPO / "deploy" / "nginx" / "fashion-serving.conf").read_text()
    served, count = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", shipped)
    assert count == 1
    (conf / "fashion-serving.conf").write_text(served)
    shipped_line = re.search(
        r"^server serve:8000 (.*);$", (REPO / "deploy/nginx/replicas.upstream").read_text(), re.M
    )
    assert shipped_line is not None
    (conf / "replicas.upstream").write_text(
        "".join(f"server 127.0.0.1:{r.port} {shipped_line.group(1)};\n" for r in replicas)
    )
    temp = "\n".join(
        f"  {kind}_temp_path {folder}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = folder / "nginx.conf"
    main.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format fleet '$status $request_time "$upstream_addr" "$upstream_status"';
  access_log {folder}/access.log fleet;
{temp}
  include conf.d/fashion-serving.conf;
}}
"""
    )
    return main


def _prometheus_conf(folder: Path, replicas: list[Replica]) -> Path:
    """deploy/prometheus as shipped, with the local replicas as static targets and a 1 s interval."""
    shipped = REPO / "deploy" / "prometheus"
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_INTERVAL_S:g}s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(shipped / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{r.port}" for r in replicas]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def fleet(store_copy: Path, tmp_path: Path) -> Iterator[Fleet]:
    nginx = require_tool("nginx", "apt-get install -y nginx")
    prometheus = require_tool("prometheus", "apt-get install -y prometheus")
    folder = tmp_path.resolve()
    env = {
        **os.environ,
        "MODEL_STORE": str(store_copy),
        "POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "LOG_LEVEL": "warning",
    }
    replicas = [
        Replica(port, {**env, "PORT": str(port)}, folder / f"replica-{i}.log")
        for i, port in enumerate(free_port() for _ in range(REPLICAS))
    ]
    balancer_port, prometheus_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for replica in replicas:
            replica.start()
        wait_until(lambda: all(r.served_version() is not None for r in replicas), timeout_s=60)
        nginx_conf = _nginx_conf(folder / "nginx", balancer_port, replicas)
        processes.append(
            subprocess.Popen(
                [nginx, "-c", str(nginx_conf), "-p", str(nginx_conf.parent), "-g", "daemon off;"]
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={_prometheus_conf(folder, replicas)}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        result = Fleet(
            replicas, f"http://127.0.0.1:{balancer_port}", f"http://127.0.0.1:{prometheus_port}", folder
        )
        wait_until(lambda: status_of(f"{result.balancer}/health/ready") == 200, timeout_s=20)
        # Prometheus answers 503 "Service Unavailable" (not JSON) until its storage is open.
        wait_until(lambda: status_of(f"{result.prometheus}/-/ready") == 200, timeout_s=30)
        wait_until(lambda: _scraped(result) == REPLICAS, timeout_s=30)
        yield result
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        for replica in replicas:
            replica.stop()


def _scraped(fleet: Fleet) -> int:
    try:
        return len(fleet.query('up{job="fashion-serving"} == 1', time.time()))
    except httpx.HTTPError:
        return 0


def test_a_fleet_behind_nginx_loses_nothing_through_a_crash_and_a_rollout(
    fleet: Fleet, store_copy: Path, synthetic_data_dir: Path
) -> None:
    load = Load(fleet.balancer)
    clients = [threading.Thread(target=load.client, args=(i,)) for i in range(CONNECTIONS)]
    for thread in clients:
        thread.start()
    report: dict[str, Any] = {}
    try:
        wait_until(lambda: len(load.sent) > 200, timeout_s=30)
        time.sleep(3 * SCRAPE_INTERVAL_S)  # every replica's series exist and have been scraped
        window_start = time.time()

        # A replica dies without a word (OOM kill, node loss), then comes back on its port.
        crashed = fleet.replicas[0]
        crashed.kill()
        time.sleep(2)
        restarted_at = time.time()
        crashed.start()
        wait_until(lambda: crashed.served_version() is not None, timeout_s=60)
        report["restart_to_ready_s"] = round(time.time() - restarted_at, 2)

        # A training job publishes and promotes a new version into the shared store.
        before = {r.port: r.metric("model_load_duration_seconds_sum") for r in fleet.replicas}
        cli(
            "train", "--store", store_copy, "--data-dir", synthetic_data_dir, "--promote", "always",
            "--epochs", "1", "--max-train-samples", "200", "--validation-size", "100",
            "--hidden-units", "16", "--no-flip",
        )  # fmt: skip
        promoted = time.time()
        swaps: dict[int, float] = {}

        def all_swapped() -> bool:
            for replica in fleet.replicas:
                if replica.port not in swaps and replica.served_version() == 2:
                    swaps[replica.port] = time.time() - promoted
            return len(swaps) == REPLICAS

        wait_until(all_swapped, timeout_s=30, interval_s=0.05)
        load_times = {
            r.port: r.metric("model_load_duration_seconds_sum") - before[r.port] for r in fleet.replicas
        }
        report["swap_s"] = [round(swaps[r.port], 2) for r in fleet.replicas]
        report["load_s"] = [round(load_times[r.port], 2) for r in fleet.replicas]
        for replica in fleet.replicas:
            # The probe above polls every 50 ms; allow that much on top.
            assert swaps[replica.port] <= POLL_INTERVAL_S + load_times[replica.port] + 0.25, report

        time.sleep(3)  # traffic on the new version
        window_end = time.time()
        time.sleep(0.5)
    finally:
        load.stop.set()
        for thread in clients:
            thread.join(timeout=30)

    report["requests"] = len(load.sent)
    report["failures"] = len(load.failures)
    assert not load.failures, load.failures[:10]
    statuses = {status for _, status in load.sent}
    assert statuses == {200, 422}

    # nginx retried what met the dead replica on another one.
    upstreams = (fleet.folder / "nginx" / "access.log").read_text().splitlines()
    report["retried_by_nginx"] = sum(1 for line in upstreams if "," in line.split('"')[1])

    # Prometheus' view of the same window: the per-second rate of /predict requests, summed over replicas.
    time.sleep(2 * SCRAPE_INTERVAL_S)  # the last samples of the window are scraped
    seconds = int(window_end - window_start)
    window_start = window_end - seconds
    (rate,) = fleet.query(
        f'sum(rate(http_requests_total{{job="fashion-serving", route="/predict"}}[{seconds}s]))', window_end
    )
    client_rate = load.answered_between(window_start, window_end) / seconds
    report["client_rate"] = round(client_rate, 1)
    report["prometheus_rate"] = round(float(rate["value"][1]), 1)
    print("fleet:", json.dumps(report))
    assert abs(float(rate["value"][1]) / client_rate - 1) <= 0.05, report

    # Every panel of the dashboard answers from this Prometheus, with data.
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= len(dashboard["panels"]) >= 10
    for expression in expressions:
        concrete = (
            expression.replace("$job", "fashion-serving")
            .replace("$__rate_interval", "15s")
            .replace("$__range", f"{seconds + 30}s")
        )
        assert "$" not in concrete, expression
        assert fleet.query(concrete, window_end), f"no data: {concrete}"
