"""The ASGI layers around every request.

ObservabilityMiddleware (outermost): request id, metrics and a JSON access log line (never payloads).
BodyGuardMiddleware: the memory and pace of request bodies.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTimeout, Overloaded, response_for
from service.http.validate import digits
from service.logs import AccessLog
from service.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500
        status_sent = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when the graceful shutdown timeout ends.
            # Answer in JSON rather than uvicorn's plain-text 500, then let the task end quietly.
            if status_sent:
                raise
            message = "the service stopped before this request finished"
            await response_for(scope["path"], 503, "shutting_down", message)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status, elapsed)
            if self.access_log.enabled:
                self.access_log.record(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": (scope.get("client") or ("-",))[0],
                    }
                )


# A random per-process prefix and a counter: unique like uuid4, without a system call per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.match(value):
            return str(value.decode())
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class BodyGuardMiddleware:
    """Bounds request bodies as they arrive: the memory all of them hold together, and their pace.

    - Bytes are counted against MAX_INFLIGHT_BODY_BYTES as they arrive, with or without a
      Content-Length, and released when the request ends. A body that would pass the budget gets
      503; a declared length that cannot fit now gets 503 before a byte is read. A client that
      declares a large body and sends nothing holds nothing.
    - Each piece of a body must arrive within BODY_TIMEOUT_S, and once that long has passed the
      body must keep up MIN_BODY_RATE bytes/s on average; otherwise 408 and the connection closes.
      Waits are checked by one sweep every BODY_TIMEOUT_S / 4 (at most 0.5 s) rather than a timer
      per read, which cost 5 % of the one-image request rate.
    - A response sent before the whole body was read closes the connection, so the rest of the
      body is never read.
    """

    def __init__(
        self, app: ASGIApp, *, budget_bytes: int, timeout_s: float, min_rate: int, metrics: Metrics
    ) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.metrics = metrics
        self.in_use = 0
        # Requests blocked on the next piece of their body (since when), and those told to give up.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared and self.in_use and self.in_use + declared > self.budget_bytes:
            refusal = self._overloaded()
            refusal.headers["Connection"] = "close"  # the body is never read
            await refusal.response(scope.get("path", ""))(scope, receive, send)
            return
        held = 0
        complete = False
        started = time.monotonic()

        async def counted_receive() -> Message:
            nonlocal held, complete
            if complete:
                return await receive()  # after the body: only a disconnect can come, at any time
            message = await self._watched(receive)
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if self.in_use + size > self.budget_bytes:
                raise self._overloaded()
            held += size
            self.in_use += size
            self.metrics.body_bytes.inc(size)
            elapsed = time.monotonic() - started
            if not complete and self.min_rate and held < self.min_rate * (elapsed - self.timeout_s):
                raise self._too_slow(f"the body arrives slower than {self.min_rate} bytes/s")
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not complete and (declared or _chunked(scope)):
                # Answered before the body was read (an error): close rather than read and discard the
                # rest of it, which could be megabytes.
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        finally:
            self.in_use -= held
            self.metrics.body_bytes.dec(held)

    async def _watched(self, receive: Receive) -> Message:
        """receive(), abandoned with 408 when it waits longer than timeout_s (see _sweep)."""
        loop = asyncio.get_running_loop()
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self._sweep_interval_s, self._sweep)
        task = asyncio.current_task()
        if task is None:  # not run by a server
            return await receive()
        self._waiting[task] = loop.time()
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # cancelled for another reason (shutdown)
            task.uncancel()
            raise self._too_slow(f"no part of the body arrived for {self.timeout_s:g} s") from None
        finally:
            del self._waiting[task]
            self._expired.discard(task)

    @property
    def _sweep_interval_s(self) -> float:
        return max(0.05, min(0.5, self.timeout_s / 4))

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task in [task for task, since in self._waiting.items() if now - since > self.timeout_s]:
            self._expired.add(task)
            task.cancel()
        loop.call_later(self._sweep_interval_s, self._sweep)

    def _overloaded(self) -> Overloaded:
        self.metrics.http_rejected.labels("body_budget").inc()
        return Overloaded("too many large requests in progress; retry shortly", headers={"Retry-After": "1"})

    def _too_slow(self, message: str) -> BodyTimeout:
        self.metrics.http_rejected.labels("body_timeout").inc()
        return BodyTimeout(message)


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope["headers"])


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return digits(value, 20) or 0
    return 0
