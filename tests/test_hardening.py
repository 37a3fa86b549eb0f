"""The hostile and careless clients of the hardening review, against the real server on loopback.

Each test is one finding: what the client does, and that the service stays responsive, bounded and
answers with the right status. Limits and timeouts are set small so that nothing waits long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.attacks import (
    answered_whole,
    connect,
    multipart,
    png,
    read_status,
    rle8_bmp,
    rss_mb,
    running_service,
    send_quietly,
)
from service.http.connection import OneWriteResponse
from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.slow
KEY = "hardening-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PREDICT = b'{"instances": [[' + b",".join([b"0"] * 784) + b"]]}"
MiB = 1024 * 1024
LIMITS = {
    "API_KEY": KEY,
    "HEADER_TIMEOUT_S": "1",
    "KEEPALIVE_TIMEOUT_S": "1",
    "BODY_TIMEOUT_S": "1",
    "MAX_INFLIGHT_BODY_BYTES": str(4 * MiB),
    "MAX_CONNECTIONS": "32",
    "MAX_EVALUATIONS": "1",
    "MAX_PIPELINED_REQUESTS": "4",
    "WRITE_TIMEOUT_S": "1",
    "LOG_LEVEL": "info",
}


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def predict(self) -> int:
        headers = {**AUTH, "content-type": "application/json"}
        return httpx.post(f"{self.url}/predict", content=PREDICT, headers=headers, timeout=10).status_code

    def metric(self, line_start: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
        return 0.0

    def request_head(self, path: str, content_type: str, extra: str = "") -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: {content_type}\r\n{extra}\r\n"
        ).encode()


@contextmanager
def serving(store: Path, log: Path, **env: str) -> Iterator[Server]:
    with running_service({"MODEL_STORE": str(store), **LIMITS, **env}, repo=REPO, log=log) as (port, process):
        yield Server(port, process, log)


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tiny_store, tmp_path_factory.mktemp("log") / "server.log") as running:
        yield running


def health_latencies(server: Server, while_running: threading.Thread) -> list[float]:
    latencies = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while while_running.is_alive():
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    return latencies


# ---- 1. decoding never holds the event loop; it has a request budget and counts in the timeout ----


def test_health_answers_while_a_slow_image_decodes(server: Server) -> None:
    # An RLE BMP: Pillow decodes it in Python, about 1 s of work for this one (the loop's, before).
    body = rle8_bmp(1300, 1300)
    outcome: dict[str, int] = {}

    def upload() -> None:
        headers = {**AUTH, "content-type": "image/bmp"}
        outcome["status"] = httpx.post(
            f"{server.url}/predict", content=body, headers=headers, timeout=30
        ).status_code

    uploading = threading.Thread(target=upload)
    uploading.start()
    latencies = health_latencies(server, uploading)
    assert outcome["status"] == 200
    assert len(latencies) > 10 and max(latencies) < 1.0  # the loop was never held for the decode


def test_decoding_counts_against_the_request_timeout(tiny_store: Path, tmp_path: Path) -> None:
    with serving(tiny_store, tmp_path / "log", REQUEST_TIMEOUT_S="0.2") as quick:
        headers = {**AUTH, "content-type": "image/bmp"}
        response = httpx.post(
            f"{quick.url}/predict", content=rle8_bmp(1300, 1300), headers=headers, timeout=30
        )
        assert (response.status_code, response.json()["error"]["code"]) == (504, "timeout")
        assert quick.predict() == 200


def test_the_pixels_of_a_whole_request_are_bounded_before_decoding(server: Server) -> None:
    # Three images of 25,000,000 pixels each, each within the per-image limit, in a 72 KB form.
    content_type, body = multipart([png(5000, 5000)] * 3)
    started = time.perf_counter()
    response = httpx.post(
        f"{server.url}/predict", content=body, headers={**AUTH, "content-type": content_type}, timeout=30
    )
    assert (response.status_code, response.json()["error"]["code"]) == (413, "image_too_large")
    assert "together" in response.json()["error"]["message"]
    assert time.perf_counter() - started < 2  # refused from the headers: nothing was decoded


# ---- 2. an idle client cannot pin the body budget ----


def test_clients_that_declare_a_body_and_send_nothing_block_nobody(server: Server) -> None:
    idle = [connect(server.port) for _ in range(4)]
    for sock in idle:
        sock.sendall(
            server.request_head("/predict", "application/octet-stream", f"Content-Length: {4 * MiB}\r\n")
        )
    try:
        assert [server.predict() for _ in range(5)] == [200] * 5  # 503 for all of them before
        assert [read_status(sock, 5) for sock in idle] == ["408"] * 4  # BODY_TIMEOUT_S, then closed
    finally:
        for sock in idle:
            sock.close()


def test_a_body_that_crawls_is_cut_off(tiny_store: Path, tmp_path: Path) -> None:
    with serving(tiny_store, tmp_path / "log", BODY_TIMEOUT_S="0.5", MIN_BODY_RATE="100000") as strict:
        with connect(strict.port) as sock:
            sock.sendall(
                strict.request_head("/predict", "application/octet-stream", "Content-Length: 784000\r\n")
            )
            status = "no answer"
            for _ in range(40):  # 100 bytes every 0.1 s: never idle for long, but 1 kB/s
                if not send_quietly(sock, bytes(100)):
                    break
                status = read_status(sock, 0.1)
                if status != "no answer":
                    break
        assert status == "408"
        assert strict.metric('http_rejected_requests_total{reason="body_timeout"}') == 1


# ---- 3. chunked bodies count against the budget as they stream in ----


def test_chunked_bodies_count_against_the_in_flight_budget(server: Server) -> None:
    chunk = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    head = server.request_head("/predict", "application/octet-stream", "Transfer-Encoding: chunked\r\n")
    sockets = [connect(server.port) for _ in range(3)]
    try:
        for sock in sockets:  # 1.5 MiB each, never finished: 4.5 MiB against a 4 MiB budget
            sock.sendall(head + chunk + b"%x\r\n" % (MiB // 2) + bytes(MiB // 2) + b"\r\n")
        statuses = [read_status(sock, 0.3) for sock in sockets]  # BODY_TIMEOUT_S (1 s) not reached
        assert statuses.count("503") == 1 and statuses.count("no answer") == 2  # before: no 503 at all
        assert server.predict() == 200  # 3 MiB held, room for a small request
    finally:
        for sock in sockets:
            sock.close()


def test_a_declared_body_that_cannot_fit_is_refused_before_it_is_read(server: Server) -> None:
    head = server.request_head("/predict", "application/octet-stream", f"Content-Length: {4 * MiB}\r\n")
    with connect(server.port) as holding, connect(server.port) as late:
        holding.sendall(head + bytes(3 * MiB))  # 3 MiB of the 4 MiB budget, held while the rest is awaited
        wait_until(lambda: server.metric("http_request_body_bytes_held") == 3 * MiB)
        late.sendall(
            server.request_head("/predict", "application/octet-stream", f"Content-Length: {2 * MiB}\r\n")
        )
        late.settimeout(5)
        answer = late.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503") and b"connection: close" in answer.lower()


def test_many_unfinished_chunked_bodies_hold_no_more_than_the_budget(server: Server) -> None:
    # Sixteen connections offer 2 MiB each (32 MiB) and never finish: the server holds at most its
    # 4 MiB budget of them (before: all 32 MiB, and 1.6 GB for 100 connections of 15 MiB).
    rss_before = rss_mb(server.process.pid)
    chunk = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    head = server.request_head("/predict", "application/octet-stream", "Transfer-Encoding: chunked\r\n")
    sockets = [connect(server.port) for _ in range(16)]
    try:
        for sock in sockets:
            send_quietly(sock, head + chunk + chunk)
        statuses = [read_status(sock, 0.3) for sock in sockets]
        assert statuses.count("503") >= 14
        assert rss_mb(server.process.pid) - rss_before < 24
    finally:
        for sock in sockets:
            sock.close()


# ---- 4. request heads are bounded in size, fields and time; connections in number ----


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", "431"),  # one big field
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * (2 * MiB), "431"),  # unfinished, refused midway
        (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", "431"),  # a long request line
        (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", "431"),
        (b"NOT HTTP AT ALL\r\n\r\n", "400"),
        (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n",
            "501",
        ),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
    ],
    ids=[
        "large-header",
        "unfinished-2MiB-header",
        "long-url",
        "150-fields",
        "not-http",
        "gzip-chunked",
        "gzip",
    ],
)
def test_oversized_or_broken_heads_are_refused_in_json(server: Server, head: bytes, status: str) -> None:
    with connect(server.port) as sock:
        send_quietly(sock, head)
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.split(b" ", 2)[1].decode() == status
    assert b'{"error":{"code":' in answer and b"connection: close" in answer
    assert server.predict() == 200


def test_a_slow_head_gets_408_and_an_idle_connection_is_closed(server: Server) -> None:
    with connect(server.port) as slow, connect(server.port) as idle:
        started = time.monotonic()
        status = "no answer"
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n" * 3:  # one byte every 0.1 s: slowloris
            if not send_quietly(slow, bytes([byte])):
                break
            status = read_status(slow, 0.1)
            if status != "no answer":
                break
        assert status == "408"
        assert read_status(idle, 5) == "closed"  # nothing was asked: closed without an answer
        assert time.monotonic() - started < 4  # HEADER_TIMEOUT_S is 1 s, not forever


def test_an_idle_kept_alive_connection_is_closed(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_status(sock, 5) == "200"
        assert read_status(sock, 5) == "closed"  # KEEPALIVE_TIMEOUT_S is 1 s


def test_connections_beyond_the_limit_get_503(server: Server) -> None:
    held = [connect(server.port) for _ in range(32)]  # accepted in order: these are the 32 allowed
    try:
        with connect(server.port) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            extra.settimeout(5)
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: server.predict() == 200, timeout_s=5)


def read_until_closed(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """Everything the server sends on this socket until it closes it."""
    sock.settimeout(timeout_s)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def test_requests_pipelined_beyond_the_bound_get_503_and_the_connection_closes(server: Server) -> None:
    # 5,000 heads at once and no answer read (it grew the server by hundreds of MB): the one in hand and
    # the four queued behind it are answered, the next gets 503 in its turn, and the rest is never parsed.
    before = server.metric('http_rejected_requests_total{reason="too_many_pipelined"}')
    with connect(server.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
        answers = read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", answers)
    assert statuses == [b"200"] * 5 + [b"503"]
    refusal = answers[answers.rindex(b"HTTP/1.1 503") :]
    assert (
        b"retry-after: 1" in refusal and b"connection: close" in refusal and b'"code":"overloaded"' in refusal
    )
    assert server.metric('http_rejected_requests_total{reason="too_many_pipelined"}') == before + 1
    with connect(server.port) as sock:  # pipelining within the bound is served in full, in order
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 4
            + b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        assert re.findall(rb"HTTP/1.1 (\d{3}) ", read_until_closed(sock)) == [b"200"] * 5


def test_an_answer_nobody_reads_is_dropped_after_the_write_timeout(server: Server) -> None:
    # 4,096 images with their inputs echoed: an answer of about 9 MB, more than the socket buffers hold.
    body = bytes(4096 * 784)
    head = server.request_head(
        "/predict?include=input&top_k=10", "application/octet-stream", f"Content-Length: {len(body)}\r\n"
    )
    before = server.metric('http_rejected_requests_total{reason="write_timeout"}')
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(head + body)
        wait_until(  # WRITE_TIMEOUT_S is 1 s
            lambda: server.metric('http_rejected_requests_total{reason="write_timeout"}') == before + 1,
            timeout_s=15,
        )
        received = b""
        with contextlib.suppress(OSError):  # the reset of a dropped connection
            received = read_until_closed(sock)
    assert not answered_whole(received)  # the answer never arrived whole
    assert server.predict() == 200


@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "in-pieces"])
def test_a_request_asking_to_upgrade_is_served_as_plain_http_with_its_body(
    server: Server, pieces: int
) -> None:
    # h2c is not spoken here: the Upgrade is ignored (RFC 9110 allows it) and the body still counts.
    upgrade = f"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: {len(PREDICT)}\r\n"
    data = server.request_head("/predict", "application/json", upgrade) + PREDICT
    with connect(server.port) as sock:
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])
            time.sleep(0.05)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"predictions"' in answer and b"connection: close" in answer


def test_refusals_of_the_connection_layer_have_the_protocols_own_shape(server: Server) -> None:
    # A Triton or TF Serving client reads {"error": "..."}, whichever layer refused its request.
    heads = {
        "pipelined": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 10,
        "too-many-headers": b"GET /v2/health/live HTTP/1.1\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(150)),
        "transfer-coding": b"POST /v1/models/fashion-mnist:predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n",
    }
    for name, head in heads.items():
        with connect(server.port) as sock:
            send_quietly(sock, head + b"\r\n")
            answer = read_until_closed(sock)
        body = answer[answer.rindex(b"\r\n\r\n") + 4 :]
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error, (name, body)


def test_a_request_asking_to_upgrade_keeps_every_body_bound(server: Server) -> None:
    # The body fed by hand is still the app's to bound: a declared size past MAX_BODY_BYTES is a 413 before
    # any of it is read, and a body that stops arriving is cut off (BODY_TIMEOUT_S is 1 s).
    upgrade = "Connection: Upgrade\r\nUpgrade: h2c\r\n"
    with connect(server.port) as sock:
        sock.sendall(
            server.request_head("/predict", "application/json", upgrade + f"Content-Length: {100 * MiB}\r\n")
        )
        assert read_status(sock, 5) == "413"
    with connect(server.port) as sock:
        sock.sendall(
            server.request_head("/predict", "application/json", upgrade + "Content-Length: 5000\r\n") + b"{"
        )
        assert read_status(sock, 10) == "408"
    assert server.predict() == 200


# ---- 7. a client that leaves mid-upload is a 499, logged once, without a traceback ----


def test_a_client_that_disconnects_mid_upload_is_recorded_as_499(server: Server) -> None:
    before = server.metric('http_requests_total{method="POST",route="/predict",status="499"}')
    with connect(server.port) as sock:
        sock.sendall(server.request_head("/predict", "application/octet-stream", "Content-Length: 78400\r\n"))
        sock.sendall(bytes(1000))
        wait_until(lambda: server.metric("http_requests_in_flight") >= 2)
    wait_until(
        lambda: server.metric('http_requests_total{method="POST",route="/predict",status="499"}') > before
    )
    log = server.log.read_text()
    assert '"status":499' in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log


# ---- 8, 13. start-up refuses an empty key; SIGTERM answers a stalled upload in JSON, within the limit ----


def test_an_empty_api_key_refuses_to_start(tiny_store: Path) -> None:
    env = {**os.environ, "MODEL_STORE": str(tiny_store), "API_KEY": "", "PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "API_KEY=''" in result.stderr and "must not be empty" in result.stderr


def test_sigterm_answers_a_stalled_upload_in_json_within_the_graceful_timeout(
    tiny_store: Path, tmp_path: Path
) -> None:
    with serving(tiny_store, tmp_path / "log", GRACEFUL_TIMEOUT_S="1", BODY_TIMEOUT_S="60") as stopping:
        with connect(stopping.port) as sock:
            sock.sendall(
                stopping.request_head("/predict", "application/octet-stream", "Content-Length: 78400\r\n")
            )
            sock.sendall(bytes(784))
            wait_until(lambda: stopping.metric("http_requests_in_flight") >= 2)
            started = time.monotonic()
            stopping.process.send_signal(signal.SIGTERM)
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                answer += chunk
            assert stopping.process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert json.loads(body)["error"]["code"] == "shutting_down"


# ---- 9. evaluations are admitted a few at a time ----


def test_evaluations_beyond_the_limit_get_503_before_their_body_is_read(server: Server) -> None:
    with connect(server.port) as stalled:  # holds the one evaluation slot while its body trickles in
        stalled.sendall(
            server.request_head("/evaluate", "application/json", "Content-Length: 1000\r\n") + b"{"
        )
        wait_until(lambda: server.metric("http_requests_in_flight") >= 2)
        busy = httpx.post(
            f"{server.url}/evaluate", json={"instances": [[0] * 784], "labels": [0]}, headers=AUTH
        )
        assert (busy.status_code, busy.headers["retry-after"]) == (503, "2")
        assert read_status(stalled, 5) == "408"  # BODY_TIMEOUT_S frees the slot
    again = httpx.post(f"{server.url}/evaluate", json={"instances": [[0] * 784], "labels": [0]}, headers=AUTH)
    assert again.status_code == 200


# ---- 10. a store file that blocks on open never blocks the service ----


def test_a_fifo_in_place_of_current_json_blocks_nothing(store_copy: Path, tmp_path: Path) -> None:
    with serving(store_copy, tmp_path / "log", POLL_INTERVAL_S="0.1") as following:
        pointer = store_copy / "fashion-mnist" / "current.json"
        failed = 'model_reloads_total{model="fashion-mnist",outcome="failure"}'
        failures = following.metric(failed)
        pointer.unlink()
        os.mkfifo(pointer)  # opening it for reading would wait for a writer forever
        wait_until(lambda: following.metric(failed) > failures + 2)
        assert httpx.get(f"{following.url}/health", timeout=2).status_code == 200
        assert following.predict() == 200  # the served version keeps serving


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))


def test_a_response_head_and_its_body_leave_in_one_write() -> None:
    """So that a replica killed mid-response never leaves a load balancer holding a head without a body
    (which it has already passed on and can no longer retry elsewhere): see tests/test_fleet.py."""
    transport = _RecordingTransport()
    response = OneWriteResponse(transport)
    response.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # not a response head: goes at once
    response.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    response.write(b"{}")
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    empty = _RecordingTransport()
    no_body = OneWriteResponse(empty)
    no_body.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    no_body.write(b"")  # what uvicorn writes for an empty body
    assert empty.writes == [b"HTTP/1.1 304 Not Modified\r\n\r\n"]
