"""`python -m bench.attacks` (`make attacks`): the hostile clients of the hardening review, for real.

Starts the service on loopback (this checkout, or `--repo` for another one such as a worktree of an
older commit) with API_KEY set and default limits, runs each attack for a bounded time, and reports
what it did to the server: /health latency while it ran (p50 and worst), the server's peak RSS (read
from /proc), what the attack's own requests got, and what ordinary one-image /predict requests got
meanwhile. Every byte goes to 127.0.0.1; every attack stops by itself.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
KEY = "attack-test-key"
AUTH = f"Authorization: Bearer {KEY}\r\n"
PREDICT_BODY = json.dumps({"instances": [[0] * 784]}).encode()
MiB = 1024 * 1024


# ---- the server and what is measured around an attack ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_service(
    env: dict[str, str], *, repo: Path = REPO, python: str = sys.executable, log: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """(port, process) of `python -m service` from `repo` on loopback, once /health/ready says 200.

    env adds to this process's environment; the server's log goes to `log` (discarded without one).
    """
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "PYTHONPATH": str(repo), **env}
    with open(log or os.devnull, "wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", "service"], cwd=repo, env=environment, stdout=log_file, stderr=log_file
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready (exit status {process.poll()})")
            time.sleep(0.05)
        yield port, process
    finally:
        process.kill()
        process.wait()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Observation:
    health_ms: list[float] = field(default_factory=list)
    predict_statuses: Counter[str] = field(default_factory=Counter)
    peak_rss_mb: float = 0.0

    def summary(self) -> dict[str, object]:
        latencies = sorted(self.health_ms) or [float("nan")]
        return {
            "health_p50_ms": round(latencies[len(latencies) // 2], 1),
            "health_max_ms": round(latencies[-1], 1),
            "peak_rss_mb": round(self.peak_rss_mb),
            "predict_meanwhile": dict(self.predict_statuses),
        }


def probe(
    base: str, ready: EventType, stop: EventType, results: QueueType[tuple[list[float], dict[str, int]]]
) -> None:
    """In its own process (the attack's threads would otherwise delay it on the GIL): /health every
    50 ms and a one-image /predict every 100 ms, until told to stop."""
    health_ms: list[float] = []
    statuses: Counter[str] = Counter()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=60) as client:
        next_predict = 0.0
        ready.set()
        while not stop.is_set():
            started = time.perf_counter()
            with suppress(httpx.HTTPError):
                client.get("/health")
            health_ms.append((time.perf_counter() - started) * 1000)
            if started >= next_predict:
                next_predict = started + 0.1
                try:
                    statuses[
                        str(client.post("/predict", content=PREDICT_BODY, headers=headers).status_code)
                    ] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
            stop.wait(0.05)
    results.put((health_ms, dict(statuses)))


@contextmanager
def observing(port: int, pid: int) -> Iterator[Observation]:
    """While the block runs: the probe process, and the server's RSS every 20 ms."""
    seen = Observation(peak_rss_mb=rss_mb(pid))
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=probe, args=(f"http://127.0.0.1:{port}", ready, stop, results))
    prober.start()
    ready.wait(timeout=60)
    done = threading.Event()

    def memory() -> None:
        while not done.is_set():
            with suppress(OSError):
                seen.peak_rss_mb = max(seen.peak_rss_mb, rss_mb(pid))
            done.wait(0.02)

    sampler = threading.Thread(target=memory, daemon=True)
    sampler.start()
    time.sleep(0.3)  # a baseline before the attack starts
    try:
        yield seen
    finally:
        done.set()
        stop.set()
        seen.health_ms, statuses = results.get(timeout=120)
        seen.predict_statuses.update(statuses)
        prober.join(timeout=10)
        sampler.join(timeout=10)


# ---- raw HTTP over sockets ----


def connect(port: int, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_status(sock: socket.socket, timeout: float) -> str:
    """The status code the server answered on this socket, 'closed' or 'no answer' (within timeout)."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "no answer"
    except OSError:
        return "reset"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """sendall that reports False once the server has closed the connection."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def post(port: int, path: str, content_type: str, body: bytes, timeout: float = 60) -> tuple[str, float]:
    """(status, seconds) of one complete request."""
    started = time.perf_counter()
    with connect(port, timeout) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: {content_type}\r\n"
        send_quietly(sock, head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = read_status(sock, timeout)
    return status, round(time.perf_counter() - started, 2)


def in_threads(count: int, work: Callable[[int], str]) -> Counter[str]:
    results: list[str] = []
    threads = [threading.Thread(target=lambda i=i: results.append(work(i))) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Counter(results)


# ---- hostile payloads ----


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(files: list[bytes], content_type: str = "image/png") -> tuple[str, bytes]:
    boundary = "attack-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def rle8_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of runs of one pixel each: Pillow decodes RLE in Python, pixel by pixel."""
    row = bytes([1, 7]) * width + b"\x00\x00"
    data = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


# ---- the attacks (the review's findings 1-4) ----


def decode_bomb(image: Callable[[], bytes], count: int) -> Callable[[int], dict[str, object]]:
    def attack(port: int) -> dict[str, object]:
        content_type, body = multipart([image()] * count)
        status, seconds = post(port, "/predict", content_type, body)
        return {"status": status, "seconds": seconds, "body_kb": len(body) // 1024}

    return attack


def rle_bmp(port: int) -> dict[str, object]:
    body = rle8_bmp(3000, 2500)
    status, seconds = post(port, "/predict", "image/bmp", body)
    return {"status": status, "seconds": seconds, "body_mb": round(len(body) / MiB, 1)}


def idle_content_length(port: int) -> dict[str, object]:
    """Four sockets declare 16 MiB bodies and send nothing for 12 s."""
    sockets = [connect(port) for _ in range(4)]
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/octet-stream\r\n"
    for sock in sockets:
        sock.sendall(head.encode() + f"Content-Length: {16 * MiB}\r\n\r\n".encode())
    deadline = time.monotonic() + 12
    answers = Counter(read_status(sock, max(0.1, deadline - time.monotonic())) for sock in sockets)
    for sock in sockets:
        sock.close()
    return {"idle_sockets_got": dict(answers)}


def chunked_hold(connections: int, megabytes: int, hold_s: float) -> Callable[[int], dict[str, object]]:
    """Connections each send `megabytes` of a chunked body that never ends, hold, then leave."""

    def attack(port: int) -> dict[str, object]:
        chunk = b"%x\r\n" % MiB + b"0" * MiB + b"\r\n"
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/octet-stream\r\n"
        release = threading.Event()

        def one(_: int) -> str:
            with connect(port) as sock:
                sock.sendall(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(megabytes):
                    if not send_quietly(sock, chunk):
                        break
                release.wait(hold_s)
                return read_status(sock, 0.5)

        threading.Timer(hold_s, release.set).start()
        return {"connections_got": dict(in_threads(connections, one))}

    return attack


def chunked_uploads(connections: int, megabytes: int) -> Callable[[int], dict[str, object]]:
    """Complete chunked uploads at once (octet-stream, so the server reads them whole)."""

    def attack(port: int) -> dict[str, object]:
        chunk = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/octet-stream\r\n"

        def one(_: int) -> str:
            with connect(port, timeout=60) as sock:
                sent = send_quietly(sock, head.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(megabytes):
                    sent = sent and send_quietly(sock, chunk)
                if sent:
                    send_quietly(sock, b"0\r\n\r\n")
                return read_status(sock, 60)

        return {"uploads_got": dict(in_threads(connections, one))}

    return attack


def json_rows(connections: int, rows: int, rounds: int) -> Callable[[int], dict[str, object]]:
    """Connections each post, `rounds` times, a JSON body of `rows` rows of 784 floats (15 MiB for
    5,000): more images than a JSON request may hold, in few brackets."""
    row = b"[" + b",".join([b"0.5"] * 784) + b"]"
    body = b'{"instances": [' + b",".join([row] * rows) + b"]}"

    def attack(port: int) -> dict[str, object]:
        def one(_: int) -> str:
            statuses = [post(port, "/predict", "application/json", body)[0] for _ in range(rounds)]
            return ",".join(sorted(set(statuses)))

        return {"body_mb": round(len(body) / 1e6, 1), "statuses": dict(in_threads(connections, one))}

    return attack


def header_flood(connections: int, megabytes: int, finish: bool) -> Callable[[int], dict[str, object]]:
    """Connections each send a header of `megabytes`, unfinished (held 3 s) or finished."""

    def attack(port: int) -> dict[str, object]:
        piece = b"a" * MiB

        def one(_: int) -> str:
            with connect(port, timeout=60) as sock:
                sent = send_quietly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                deadline = time.monotonic() + 20
                for _ in range(megabytes):
                    sent = sent and time.monotonic() < deadline and send_quietly(sock, piece)
                if finish and sent:
                    send_quietly(sock, b"\r\n\r\n")
                return read_status(sock, 20 if finish else 3)

        started = time.perf_counter()
        got = in_threads(connections, one)
        return {"connections_got": dict(got), "seconds": round(time.perf_counter() - started, 1)}

    return attack


def many_headers(port: int) -> dict[str, object]:
    """One request with a million header fields."""
    with connect(port, timeout=60) as sock:
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(1_000_000))
        send_quietly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        return {"status": read_status(sock, 30)}


def slowloris(port: int) -> dict[str, object]:
    """Twenty connections each send a request head one byte per second, for at most 15 s."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100

    def one(_: int) -> str:
        with connect(port) as sock:
            started = time.monotonic()
            for byte in head:
                if time.monotonic() - started > 15:
                    return "still open after 15 s"
                if not send_quietly(sock, bytes([byte])):
                    return f"closed by the server after {time.monotonic() - started:.0f} s"
                sock.settimeout(1.0)
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    answer = b""
                status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
                return f"{status} after {time.monotonic() - started:.0f} s"
            return "finished its head"

    return {"connections": dict(in_threads(20, one))}


def pipeline_flood(connections: int, kilobytes: int) -> Callable[[int], dict[str, object]]:
    """Connections each send `kilobytes` of `GET /health` heads back to back without reading an answer,
    hold 3 s, then read what came back."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    flood = head * (kilobytes * 1024 // len(head))

    def attack(port: int) -> dict[str, object]:
        def one(_: int) -> str:
            with connect(port, timeout=30) as sock:
                sock.settimeout(10)
                sent = 0
                with suppress(OSError):
                    for start in range(0, len(flood), 65536):
                        sock.sendall(flood[start : start + 65536])
                        sent = start + 65536
                time.sleep(3)
                answers = drain(sock, 10)
            answered, refused = answers.count(b"HTTP/1.1 200"), answers.count(b"HTTP/1.1 503")
            return f"{answered} answered, {refused} refused, " + (
                "all sent" if sent >= len(flood) else "cut off"
            )

        return {"connections": dict(in_threads(connections, one))}

    return attack


def drain(sock: socket.socket, within_s: float) -> bytes:
    """What the server sends on this socket until it closes or resets it, or within_s has passed."""
    sock.settimeout(within_s)
    received = bytearray()
    deadline = time.monotonic() + within_s
    with suppress(OSError):
        while time.monotonic() < deadline and (chunk := sock.recv(1 << 20)):
            received += chunk
    return bytes(received)


def answered_whole(received: bytes) -> bool:
    """Whether these bytes hold a whole answer: its head and all the body its Content-Length declares."""
    head, separator, body = received.partition(b"\r\n\r\n")
    declared = re.search(rb"content-length: (\d+)", head) if separator else None
    return declared is not None and len(body) >= int(declared[1])


def _how_it_ended(sock: socket.socket, within_s: float = 5.0) -> str:
    """Reads what is left of an answer: whether the server had dropped it or still held all of it."""
    received = drain(sock, within_s)
    status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "no"
    held = "answer held until read" if answered_whole(received) else "answer dropped by the server"
    return f"{status} {held}"


def unread_answers(connections: int) -> Callable[[int], dict[str, object]]:
    """Connections each ask for 4,096 images with their inputs echoed (an answer of about 9 MB) through
    a small receive window, and never read it; how long until the server lets them go."""
    body = bytes(4096 * 784)
    head = (
        "POST /predict?include=input&top_k=10 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    def attack(port: int) -> dict[str, object]:
        sockets = []
        for _ in range(connections):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(head + body)
            sockets.append(sock)
        time.sleep(40)  # past WRITE_TIMEOUT_S (30 s)
        ended = Counter[str]()
        for sock in sockets:
            ended[_how_it_ended(sock)] += 1
            sock.close()
        return {"after_40_s": dict(ended)}

    return attack


ATTACKS: dict[str, Callable[[int], dict[str, object]]] = {
    "png_1x25M_x10": decode_bomb(lambda: png(1, 25_000_000), 10),
    "png_1x32768_x1000": decode_bomb(lambda: png(1, 32_768), 1000),
    "png_5000x5000_x20": decode_bomb(lambda: png(5000, 5000), 20),
    "png_5000x5000_x2": decode_bomb(lambda: png(5000, 5000), 2),
    "bmp_rle_15MB": rle_bmp,
    "idle_content_length_x4": idle_content_length,
    "chunked_15MiB_held_x100": chunked_hold(100, 15, 5.0),
    "chunked_16MiB_uploads_x64": chunked_uploads(64, 16),
    "header_20MB_unfinished_x50": header_flood(50, 20, finish=False),
    "header_100MB": header_flood(1, 100, finish=True),
    "headers_1M": many_headers,
    "json_5000_rows_15MB_x4": json_rows(4, 5000, 5),
    "slowloris_x20": slowloris,
    "pipeline_6MiB_unread": pipeline_flood(1, 6 * 1024),
    "pipeline_257KiB_unread_x30": pipeline_flood(30, 257),
    "unread_9MB_answers_x8": unread_answers(8),  # 8 x 4,096 images fit MAX_QUEUE_IMAGES
}


def run(repo: Path, python: str, names: list[str]) -> dict[str, dict[str, object]]:
    report: dict[str, dict[str, object]] = {}
    for name in names:
        # A fresh server per attack: one attack's high-water mark must not count against the next.
        env = {"MODEL_STORE": str(repo / "models"), "API_KEY": KEY, "LOG_LEVEL": "error"}
        with (
            running_service(env, repo=repo, python=python) as (port, process),
            observing(port, process.pid) as seen,
        ):
            base_rss = rss_mb(process.pid)
            outcome = ATTACKS[name](port)
            after_rss = rss_mb(process.pid)
        report[name] = {
            "rss_before_mb": round(base_rss),
            **seen.summary(),
            "rss_after_mb": round(after_rss),
            **outcome,
        }
        print(name, json.dumps(report[name]), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose service to attack")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with the service's dependencies"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), help="run only these attacks")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = run(args.repo.resolve(), args.python, args.only or list(ATTACKS))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
