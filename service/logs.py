"""JSON log lines for the service: application messages through `logging`, the access log beside it.

Both write one JSON object a line to standard error with the same leading fields (time, level,
logger, message). The access log skips the logging module: a request's line is built with one
orjson call and buffered (5 us a line here, against 18 us for a record, a formatter and a handler's
write), then written in whole lines at most PIPE_BUF bytes at a time, so the workers sharing one
standard error never interleave inside a line: when the buffer holds that much, every
FLUSH_INTERVAL_S, and when the service stops, so a graceful shutdown loses no line.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import select
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, which `default` never sees
            return orjson.dumps({key: _plain(value) for key, value in entry.items()}, default=str).decode()


def _plain(value: object) -> object:
    return (
        value
        if isinstance(value, str | float | bool | None)
        or (isinstance(value, int) and -(2**63) <= value < 2**64)
        else str(value)
    )


def configure_logging(level: str) -> None:
    # The lines carry none of the caller's file and line, thread or process: not collecting them (the
    # logging HOWTO's "Optimization") takes a quarter off the access log line (23 to 17 us).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


ACCESS_LOGGER = "service.access"
FLUSH_INTERVAL_S = 0.25
_WRITE_BYTES = select.PIPE_BUF  # a write this small to a pipe is never interleaved with another's


class AccessLog:
    """One line per request, when the `service.access` logger is enabled for INFO (LOG_LEVEL)."""

    def __init__(self, fd: int = 2) -> None:
        self.enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        self._fd = fd
        self._lines: list[bytes] = []
        self._size = 0
        self._ticker: asyncio.TimerHandle | None = None

    def record(self, fields: dict[str, Any]) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "message": "request",
            **fields,
        }
        try:
            line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:  # a path with a lone surrogate: the standard library escapes it
            line = json.dumps(entry, default=str).encode() + b"\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= _WRITE_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, whole lines, at most PIPE_BUF bytes a write (a longer line alone)."""
        lines, self._lines, self._size = self._lines, [], 0
        chunk = bytearray()
        for line in lines:
            if chunk and len(chunk) + len(line) > _WRITE_BYTES:
                self._write(chunk)
                chunk = bytearray()
            chunk += line
        if chunk:
            self._write(chunk)

    def start(self) -> None:
        """Flush every FLUSH_INTERVAL_S from the running event loop."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.flush()
            self._ticker = loop.call_later(FLUSH_INTERVAL_S, tick)

        self._ticker = loop.call_later(FLUSH_INTERVAL_S, tick)
        atexit.register(self.flush)  # a process that ends without its lifespan's stop

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        atexit.unregister(self.flush)
        self.flush()

    def _write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:  # standard error closed or gone: the lines have nowhere to go
            pass
