"""One ASGI layer around every request: request id, metrics and a JSON access log line (never payloads)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics

access_log = logging.getLogger("service.access")
REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": (scope.get("client") or ("-",))[0],
                    },
                )


# A random per-process prefix and a counter: unique like uuid4, without a system call per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.match(value):
            return str(value.decode())
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class BodyBudgetMiddleware:
    """Bounds the request bodies held in memory at once: past the budget, 503 before a body is read.

    Uses the declared Content-Length; a body without one is still capped by MAX_BODY_BYTES.
    """

    def __init__(self, app: ASGIApp, budget_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        self.in_use = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = _content_length(scope) if scope["type"] == "http" else 0
        if not size:
            await self.app(scope, receive, send)
            return
        if self.in_use and self.in_use + size > self.budget_bytes:
            self.metrics.rejected.labels("body_budget").inc()
            response = error_response(
                503, "overloaded", "too many large requests in progress; retry shortly", {"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        self.in_use += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_use -= size


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
