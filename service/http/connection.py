"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with the bounds it lacks.

uvicorn with httptools reads a request head of any size, with any number of fields, for as long
as the client takes, and keeps any number of connections open. With no proxy in front (`docker
run`), that lets a handful of sockets hold memory or every connection slot. This subclass adds:

- max_header_bytes: the request line and headers together; past it, 431 and the connection closes;
- max_headers: header fields per request; past it, 431;
- header_timeout_s: from the connection (or from the first byte of a later request on a kept-alive
  connection) to the end of the head; past it, 408, or a plain close when nothing was sent at all
  (checked by one sweep per server every header_timeout_s / 4, at most 0.5 s);
- max_connections: connections opened beyond it get 503 with Retry-After on their first request and
  are closed;
- max_pipelined: requests a connection may send ahead of the answer it is reading. uvicorn queues every
  pipelined request it parses and reads on after each answer, so one socket that sends heads and never
  reads its answers grew the server by hundreds of MB. The request beyond the bound is answered 503
  (Retry-After, in order, after the queued ones), nothing more of the connection is parsed, and it closes;
- write_timeout_s: how long an answer may wait for a client that does not read it (the send buffer full
  past its high-water mark); then the connection is dropped and what it held is freed. With the
  pipeline bounded and each answer written only once the one before has left, a connection holds at
  most one unsent answer.

A response's head is held back until its body and both leave in one write: one system call fewer per
response, and a process killed mid-response (SIGKILL, OOM) never leaves a peer such as a load balancer
with a head it has already passed on and no body, which it could no longer retry elsewhere.

Idle kept-alive connections are closed by uvicorn's own keep-alive timeout. Requests refused here
never reach the application; the answer is the API's JSON error shape, written here directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

import httptools
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import brief, error_body
from service.http.validate import digits

access_log = logging.getLogger("service.access")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    max_pipelined: int = 16
    write_timeout_s: float = 30.0
    on_refused: Callable[[str], None] = lambda reason: None  # counts refusals (a metric)


class OneWriteResponse:
    """A request's view of the connection that holds its response head back until the first body write
    (an empty one included) and sends both together. `100 Continue` is no response head: it goes at once."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is None and data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._transport.get_extra_info(name, default)


class _Refused(Exception):
    """Raised from a parser callback (after answering) to stop parsing a refused request."""


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """The protocol class to pass to uvicorn as `http=`, bound to these limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_capacity = len(self.connections) > self.limits.max_connections
        self._refusing = False
        self._head_deadline: float | None = None
        self._write_deadline: float | None = None
        self._upgrade_body: int | None = None  # body bytes still due of a request whose Upgrade is ignored
        self._start_head()
        _HeadSweeper.ensure_running(self)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        self._unset_keepalive_if_required()
        if self._upgrade_body is not None:
            self._feed_upgrade_body(data)
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # No WebSocket routes, no h2c: the request is served as plain HTTP/1.1 (RFC 9110 lets a
            # server ignore Upgrade). httptools stops at the end of the head, so its body is read here.
            self._unsupported_upgrade_warning()
            self._feed_upgrade_body(data[upgrade.args[0] :])
        except httptools.HttpParserError:
            # Either a callback below refused the request (and answered), or the bytes are not HTTP.
            self._refuse(400, "invalid_http", "the request is not valid HTTP/1.1", "invalid_http")
            return
        # A head still incomplete after this chunk: counted per chunk, so httptools never buffers
        # much more than the limit.
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse_head_too_large()

    # ---- parser callbacks ----

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a pipelined request, parsed while the previous one is served
            self._start_head()
        elif self._head_deadline is None:  # the first byte of a later request on a kept-alive connection
            self._head_deadline = self.loop.time() + self.limits.header_timeout_s

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(
                431,
                "too_many_headers",
                f"more than {self.limits.max_headers} header fields",
                "too_many_headers",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_deadline = None
        # A head that arrived whole in one chunk (with its body, maybe): measured from what was parsed,
        # in the one pass that also finds its transfer codings (uvicorn has lowercased the names).
        head_bytes, codings = len(self.url), []
        for name, value in self.headers:
            head_bytes += len(name) + len(value) + 4
            if name == b"transfer-encoding":
                codings.append(value)
        if head_bytes > self.limits.max_header_bytes:
            self._refuse_head_too_large()
            raise _Refused
        if self._over_capacity:
            self._refuse(
                503,
                "overloaded",
                f"more than {self.limits.max_connections} open connections; retry shortly",
                "too_many_connections",
                retry_after=True,
            )
            raise _Refused
        if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
            # httptools decodes only chunked; anything else (gzip, chunked) would be read as plain chunks.
            received = brief(b", ".join(codings).decode("latin-1"))
            message = f"the only transfer coding accepted is chunked, received {received}"
            self._refuse(501, "unsupported_transfer_coding", message, "invalid_http")
            raise _Refused
        if self.parser.should_upgrade():
            self._ignore_upgrade(chunked=bool(codings))
        super().on_headers_complete()
        if self._upgrade_body is not None:
            self.cycle.keep_alive = False  # the parser ends with the head: nothing after the body is read
        if self.scope["method"] != "HEAD":  # a HEAD response has no body to wait for
            self.cycle.transport = OneWriteResponse(self.transport)  # type: ignore[assignment]
        if len(self.pipeline) > self.limits.max_pipelined:
            self._refuse_pipelined()
            raise _Refused

    def on_message_complete(self) -> None:
        if self._upgrade_body:  # httptools calls the message complete at its head; the body is still due
            return
        super().on_message_complete()

    # ---- ignored upgrades ----

    def _ignore_upgrade(self, *, chunked: bool) -> None:
        """A request with `Connection: Upgrade`: its body (by Content-Length; a chunked one is refused)
        is fed to the request by hand, since httptools hands everything after the head to the new
        protocol."""
        if chunked:
            self._refuse(400, "invalid_http", "a chunked body with Connection: Upgrade", "invalid_http")
            raise _Refused
        length = digits(dict(self.headers).get(b"content-length", b"0"), 20)
        if length is None:
            self._refuse(400, "invalid_http", "the Content-Length is not a number", "invalid_http")
            raise _Refused
        self._upgrade_body = length

    def _feed_upgrade_body(self, data: bytes) -> None:
        due = self._upgrade_body or 0
        if due and data:
            super().on_body(data[:due])
            due = self._upgrade_body = due - min(due, len(data))
            if due == 0:
                super().on_message_complete()
        # What follows the body is not parsed (the connection closes after the answer).

    # ---- head state ----

    def _start_head(self, *, deadline: bool = True) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        if deadline and self._head_deadline is None:
            self._head_deadline = self.loop.time() + self.limits.header_timeout_s

    def on_response_complete(self) -> None:
        waiting = bool(self.pipeline)
        super().on_response_complete()
        if self._refusing:  # what is queued is answered; what arrives is read and dropped, so the close
            return  # that follows is a FIN, not a reset that could lose the answers in flight
        if not waiting:
            # The next request's head: its clock starts at its first byte (on_message_begin); until
            # then uvicorn's keep-alive timeout closes the idle connection.
            self._start_head(deadline=False)

    def _refuse_pipelined(self) -> None:
        """The newest queued request (the one past the bound) is answered 503 in its turn, and the
        connection closes after it; the rest of its input is not parsed."""
        self._stop_parsing(503, "too_many_pipelined")
        cycle, _ = self.pipeline[0]
        cycle.keep_alive = False
        message = f"more than {self.limits.max_pipelined} requests sent ahead of their answers; read them"
        refusal = _answer(cycle.scope["path"], 503, "overloaded", message, retry_after=True)
        self.pipeline[0] = (cycle, refusal)

    # ---- write state ----

    def pause_writing(self) -> None:
        """The client is not reading: its answer has this long to leave (checked by the sweeper)."""
        super().pause_writing()
        self._write_deadline = self.loop.time() + self.limits.write_timeout_s

    def resume_writing(self) -> None:
        self._write_deadline = None
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_deadline = None  # closing or not: a closed transport still waits for its bytes to leave
        self._stop_parsing(0, "write_timeout")
        self.transport.abort()  # close() would wait for the unread bytes to leave

    def check_deadlines(self, now: float) -> None:
        if now >= (self._head_deadline or now + 1):
            self._head_timed_out()
        if now >= (self._write_deadline or now + 1):
            self._write_timed_out()

    @property
    def _client_host(self) -> str:
        return str((self.client or ("-",))[0])

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:
            self.limits.on_refused("idle_connection")
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(
            408,
            "header_timeout",
            f"the request headers did not arrive within {self.limits.header_timeout_s:g} s",
            "header_timeout",
        )

    def _refuse_head_too_large(self) -> None:
        self._refuse(
            431,
            "headers_too_large",
            f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
            "headers_too_large",
        )

    def _stop_parsing(self, status: int, reason: str) -> None:
        """A refusal: counted (a metric) and logged, and nothing more of the connection is parsed."""
        self._refusing = True
        self._head_deadline = None
        self.limits.on_refused(reason)
        access_log.info("refused", extra={"status": status, "reason": reason, "client": self._client_host})

    def _refuse(
        self, status: int, code: str, message: str, reason: str, *, retry_after: bool = False
    ) -> None:
        """Answer with a JSON error and close; the rest of the connection's input is ignored."""
        if self._refusing or self.transport.is_closing():
            return
        self._stop_parsing(status, reason)
        path = getattr(self, "url", b"").partition(b"?")[0].decode("latin-1")  # as much as has arrived
        body, headers = _error(path, code, message, retry_after=retry_after)
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "connection: close"]
        head += [f"{name.decode()}: {value.decode()}" for name, value in headers]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.transport.close()


def _error(
    path: str, code: str, message: str, *, retry_after: bool
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The error's body, in the shape of the path's protocol, and headers (a refusal is written before
    any app runs)."""
    body = error_body(path, code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    return body, headers


def _answer(path: str, status: int, code: str, message: str, *, retry_after: bool) -> ASGI3Application:
    """An ASGI app that answers every request with this error (a queued request refused in its turn)."""
    body, headers = _error(path, code, message, retry_after=retry_after)

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class _HeadSweeper:
    """One timer per server that ends heads and writes past their deadline, instead of a timer per request
    (creating and cancelling one per request costs about 5 % of the one-image request rate)."""

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self.loop = protocol.loop
        self.connections = protocol.connections
        self.interval_s = max(0.05, min(0.5, protocol.limits.header_timeout_s / 4))
        self.loop.call_later(self.interval_s, self.sweep)

    @classmethod
    def ensure_running(cls, protocol: GuardedHttpToolsProtocol) -> None:
        state = protocol.server_state
        if getattr(state, "head_sweeper", None) is None:
            state.head_sweeper = cls(protocol)  # type: ignore[attr-defined]

    def sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                connection.check_deadlines(now)
        self.loop.call_later(self.interval_s, self.sweep)
