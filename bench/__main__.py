"""`python -m bench` (`make bench`): start each server in turn on loopback, drive it with wrk, compare.

Prints one table (req/s, images/s, p50, p99) and the ratios the fast-path targets are stated in, and
writes bench/results/results.json and bench/results/chart.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.attacks import free_port
from bench.workloads import WORKLOADS, Workload, build_bodies
from core.engines import quiet_tensorflow

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
STORE = REPO / "models"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str
    workloads: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    peer: str | None = None  # a key of PEERS: runs in that venv (bench/.venvs/NAME), not this one
    ready_path: str = "/health/ready"


# Peers that pin what this project cannot share (KServe its FastAPI, PyTriton NumPy < 2): each gets a
# venv the bench creates on first use, with exactly these packages.
PEERS = {
    "kserve": ("kserve==0.21.0", "onnxruntime==1.32.0"),
    "triton": ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime==1.32.0"),
}
PEER_VENVS = REPO / "bench" / ".venvs"


@dataclass
class Result:
    server: str
    workload: str
    connections: int
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    images_per_request: int

    @property
    def rps(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0

    @property
    def images_per_s(self) -> float:
        return self.rps * self.images_per_request


def servers(version_dir: Path) -> list[ServerSpec]:
    return [
        ServerSpec(
            "service",
            "service",
            ("json1", "png1", "photo1", "json256", "bin4096", "v2bin1", "v2json1", "v1json1"),
            (("MODEL_STORE", str(STORE)), ("LOG_LEVEL", "warning")),
        ),
        # The same service with two worker processes: what a second core buys.
        ServerSpec(
            "service_w2",
            "service",
            ("json1",),
            (("MODEL_STORE", str(STORE)), ("LOG_LEVEL", "warning"), ("WORKERS", "2")),
        ),
        # The same service serving version 1, published before OOD detection: what the flag costs.
        ServerSpec(
            "service_v1",
            "service",
            ("json1",),
            (("MODEL_STORE", str(STORE)), ("LOG_LEVEL", "warning"), ("MODEL_VERSION", "1")),
        ),
        # The same service behind uvicorn's stock protocols: what the head and connection guards cost.
        ServerSpec(
            "svc_httptools",
            "bench.servers.service_stock_http",
            ("json1",),
            (("MODEL_STORE", str(STORE)), ("LOG_LEVEL", "warning"), ("HTTP_IMPL", "httptools")),
        ),
        ServerSpec(
            "svc_h11",
            "bench.servers.service_stock_http",
            ("json1",),
            (("MODEL_STORE", str(STORE)), ("LOG_LEVEL", "warning"), ("HTTP_IMPL", "h11")),
        ),
        ServerSpec("fast_echo", "bench.servers.fast_echo", ("json1",)),
        ServerSpec("asgi_echo", "bench.servers.asgi_echo", ("json1",)),
        ServerSpec("pydantic_echo", "bench.servers.pydantic_echo", ("json1",)),
        ServerSpec(
            "litserve",
            "bench.servers.litserve_peer",
            ("json1",),
            (("ONNX_FILE", str(version_dir / "model.onnx")),),
        ),
        ServerSpec(
            "naive", "bench.servers.naive", ("json1",), (("MODEL_FILE", str(version_dir / "model.keras")),)
        ),
        # The servers people pick instead, serving the same ONNX file with the same ONNX Runtime options,
        # each sent what its protocol expects.
        ServerSpec(
            "kserve",
            "bench.servers.kserve_peer",
            ("v1json1", "v2json1", "v2bin1"),
            (("ONNX_FILE", str(version_dir / "model.onnx")),),
            peer="kserve",
            ready_path="/v1/models/fashion-mnist",
        ),
        ServerSpec(
            "triton",
            "bench.servers.triton_peer",
            ("v2json1", "v2bin1"),
            # PyTriton's Python backend loads the venv interpreter's libpython.
            (("ONNX_FILE", str(version_dir / "model.onnx")), ("LD_LIBRARY_PATH", _libpython_dir())),
            peer="triton",
            ready_path="/v2/models/fashion-mnist/ready",
        ),
    ]


def _libpython_dir() -> str:
    import sysconfig

    return str(sysconfig.get_config_var("LIBDIR") or "")


def peer_python(name: str) -> str:
    """The interpreter of the peer's venv, created (once per set of requirements) when missing."""
    requirements = PEERS[name]
    venv = PEER_VENVS / name
    stamp = venv / ".requirements"
    if not stamp.is_file() or stamp.read_text() != "\n".join(requirements):
        print(f"creating the {name} venv in {venv} (once): {' '.join(requirements)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *requirements], check=True)
        stamp.write_text("\n".join(requirements))
    return str(venv / "bin" / "python")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per measurement")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--only", help="comma-separated server names")
    parser.add_argument("--workloads", help="comma-separated workload names")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 1
    connections = [int(c) for c in args.connections.split(",")]
    version_dir = _current_version_dir()
    chosen = [s for s in servers(version_dir) if not args.only or s.name in args.only.split(",")]
    results: list[Result] = []
    extras: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bodies = build_bodies(Path(tmp))
        for spec in chosen:
            workloads = [w for w in spec.workloads if not args.workloads or w in args.workloads.split(",")]
            if not workloads:
                continue
            with _running(spec) as (pid, startup_s):
                if spec.name == "service":
                    extras["service_start_to_ready_s"] = startup_s
                for workload in workloads:
                    for count in connections:
                        results.append(
                            _measure(spec, WORKLOADS[workload], bodies[workload], count, args.duration)
                        )
                        print(_row(results[-1]), flush=True)
                if spec.name == "service":
                    extras["service_peak_rss_mb"] = _peak_rss_mb(pid)
    report = {
        "results": [asdict(r) | {"rps": r.rps, "images_per_s": r.images_per_s} for r in results],
        "ratios": ratios(results),
        **extras,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    _chart(results, args.output / "chart.png")
    print(_table(results))
    for key, value in {**ratios(results), **extras}.items():
        print(f"{key:52} {value:10.3f}")
    return 0


def ratios(results: list[Result]) -> dict[str, float]:
    """The figures the fast-path targets are stated in (present when both sides were measured)."""
    by = {(r.server, r.workload, r.connections): r for r in results}
    out: dict[str, float] = {}

    def put(key: str, a: tuple[str, str, int], b: tuple[str, str, int], attr: str = "rps") -> None:
        if a in by and b in by and getattr(by[b], attr):
            out[key] = getattr(by[a], attr) / getattr(by[b], attr)

    put("json1@64 service / fast_echo (target >= 0.8)", ("service", "json1", 64), ("fast_echo", "json1", 64))
    put("json1@64 service / asgi_echo (no framework)", ("service", "json1", 64), ("asgi_echo", "json1", 64))
    put("json1@64 fast_echo / asgi_echo (FastAPI)", ("fast_echo", "json1", 64), ("asgi_echo", "json1", 64))
    put(
        "json1@64 service / pydantic_echo (target >= 2.5)",
        ("service", "json1", 64),
        ("pydantic_echo", "json1", 64),
    )
    put("json1@64 service / litserve (target >= 2)", ("service", "json1", 64), ("litserve", "json1", 64))
    put("json1@64 service / naive", ("service", "json1", 64), ("naive", "json1", 64))
    put(
        "json1@64 service (guarded) / svc_httptools (stock)",
        ("service", "json1", 64),
        ("svc_httptools", "json1", 64),
    )
    put("json1@64 svc_h11 / service (guarded)", ("svc_h11", "json1", 64), ("service", "json1", 64))
    for workload, target in (("v2bin1", 1.0), ("v2json1", 0.9), ("v1json1", 0.9)):
        put(
            f"{workload}@64 / json1@64 /predict (target >= {target})",
            ("service", workload, 64),
            ("service", "json1", 64),
        )
    for connections in (1, 16, 64):
        put(
            f"json1@{connections} service (OOD) / service_v1 (no OOD) (target >= 0.9)",
            ("service", "json1", connections),
            ("service_v1", "json1", connections),
        )
    put(
        "png1@64 service / fast_echo json1 (target >= 0.6)",
        ("service", "png1", 64),
        ("fast_echo", "json1", 64),
    )
    put("photo1@16 / png1@16 (target >= 0.4)", ("service", "photo1", 16), ("service", "png1", 16))
    # Against the peers, request for request in the same protocol.
    peers = [
        ("triton", "v2json1", " (target >= 2)"),
        ("triton", "v2bin1", " (target >= 2)"),
        ("kserve", "v1json1", " (target >= 2)"),
        ("kserve", "v2json1", ""),
        ("kserve", "v2bin1", ""),
    ]
    for peer, workload, stated in peers:
        for connections in (1, 64):
            goal = stated if connections == 64 else ""
            put(
                f"{workload}@{connections} service / {peer}{goal}",
                ("service", workload, connections),
                (peer, workload, connections),
            )
    for connections in (16, 64):
        put(
            f"json1@{connections} service_w2 (WORKERS=2) / service (target >= 1.4 at 64)",
            ("service_w2", "json1", connections),
            ("service", "json1", connections),
        )
    a, b = by.get(("service", "json1", 1)), by.get(("fast_echo", "json1", 1))
    if a and b:
        out["json1@1 p50 service - fast_echo, ms (target <= 0.2)"] = a.p50_ms - b.p50_ms
    for workload, target in (("json256", 20_000), ("bin4096", 50_000)):
        best = max(
            (r.images_per_s for r in results if r.server == "service" and r.workload == workload), default=0
        )
        if best:
            out[f"{workload} best images/s (target >= {target})"] = best
    return out


def _current_version_dir() -> Path:
    from core.store import ModelStore

    store = ModelStore(STORE, "fashion-mnist")
    version = store.current_version()
    if version is None:
        raise SystemExit("error: the bundled store has no current version")
    return store.version_dir(version)


@contextmanager
def _running(spec: ServerSpec) -> Iterator[tuple[int, float]]:
    port = free_port()
    env = quiet_tensorflow({**os.environ, **dict(spec.env), "PORT": str(port), "HOST": "127.0.0.1"})
    python = peer_python(spec.peer) if spec.peer else sys.executable
    started = time.perf_counter()
    # A session of its own, stopped as a whole: LitServe's spawned workers outlived their parent and
    # kept a core busy through the servers measured after it.
    process = subprocess.Popen(
        [python, "-m", spec.module],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    spec_url = f"http://127.0.0.1:{port}"
    try:
        startup = _wait_ready(spec_url + spec.ready_path, process, started)
        os.environ["BENCH_URL"] = spec_url
        yield process.pid, startup
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server and everything it started; SIGKILL to what is left after 20 s."""
    group = process.pid  # the session leader's pid is its process group's id
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def _wait_ready(ready_url: str, process: subprocess.Popen[bytes], started: float) -> float:
    deadline = started + 120
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise SystemExit("error: server not ready within 120 s")


def _measure(spec: ServerSpec, workload: Workload, script: Path, connections: int, duration: int) -> Result:
    url = os.environ["BENCH_URL"]
    # A short warm-up run, then the measured one; wrk's done() hook prints one JSON line.
    for seconds in (1, max(1, duration)):
        completed = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                f"{url}{workload.path}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    line = next(line for line in completed.stdout.splitlines() if line.startswith("{"))
    stats = json.loads(line)
    return Result(
        spec.name,
        workload.name,
        connections,
        stats["requests"],
        stats["duration_us"] / 1e6,
        stats["errors"],
        stats["non2xx"],
        stats["p50_us"] / 1000,
        stats["p99_us"] / 1000,
        workload.images,
    )


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _row(r: Result) -> str:
    return (
        f"{r.server:14} {r.workload:8} {r.connections:>4} {r.rps:>10.0f} {r.images_per_s:>12.0f} "
        f"{r.p50_ms:>9.2f} {r.p99_ms:>9.2f} {r.errors + r.non_2xx:>7}"
    )


def _table(results: list[Result]) -> str:
    header = (
        f"{'server':14} {'workload':8} {'conn':>4} {'req/s':>10} {'images/s':>12} "
        f"{'p50 ms':>9} {'p99 ms':>9} {'failed':>7}"
    )
    return "\n".join([header, "-" * len(header), *map(_row, results)])


def _chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.workload == "json1"]
    labels = sorted({r.server for r in rows}, key=lambda s: [x.server for x in rows].index(s))
    conns = sorted({r.connections for r in rows})
    figure, axis = plt.subplots(figsize=(9, 4), dpi=90)
    width = 0.8 / max(1, len(conns))
    for i, count in enumerate(conns):
        values = [next((r.rps for r in rows if r.server == s and r.connections == count), 0) for s in labels]
        axis.bar([x + i * width for x in range(len(labels))], values, width, label=f"{count} connections")
    axis.set_xticks([x + width * (len(conns) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel("requests/s (one image per request, JSON)")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
