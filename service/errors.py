"""Typed API errors and the one place that turns every exception into a JSON error response.

Body: {"error": {"code": "...", "message": "..."}}. Client mistakes are 4xx, overload and
not-ready are 503, timeouts 504; a client that left mid-request is recorded as 499; anything
unexpected is logged and becomes a generic 500.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from core.datasets import DatasetError, DatasetNotFound
from core.preprocessing import ImageFormatMismatch, ImageTooLarge, InvalidInput
from core.store import StoreError

logger = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}

    def response(self, path: str = "") -> Response:
        """The error in the shape of the protocol that `path` belongs to."""
        return response_for(path, self.status, self.code, self.message, self.headers)


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class BodyTimeout(ApiError):
    """The body stalled or crawled: answered with 408 and the connection is closed."""

    status = 408
    code = "body_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class InvalidRequest(ApiError):
    status = 422
    code = "invalid_request"


class NotReady(ApiError):
    status = 503
    code = "not_ready"


class Overloaded(ApiError):
    status = 503
    code = "overloaded"


class Timeout(ApiError):
    status = 504
    code = "timeout"


def brief(value: object, limit: int = 60) -> str:
    """A client-supplied value (or an exception about one) for an error message, cut short: messages
    are logged, and a client must not be able to write its payload into the log through them."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The standard protocols' own error shape: {"error": "message"}, and 400 (not 422) for bad input,
# as TF Serving, Triton and KServe answer.
STANDARD_PROTOCOL_PREFIXES = ("/v1/", "/v2")


def respond(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The error response in the shape of the protocol the request used."""
    return response_for(request.url.path, status, code, message, headers)


def response_for(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    if path.startswith(STANDARD_PROTOCOL_PREFIXES):
        status = 400 if status == 422 else status
    return Response(
        error_body(path, code, message), status_code=status, headers=headers, media_type="application/json"
    )


def error_body(path: str, code: str, message: str) -> bytes:
    """The error in the shape of the protocol the path belongs to (the connection layer writes its
    refusals with it too, so a Triton client gets its own shape from every layer)."""
    if path.startswith(STANDARD_PROTOCOL_PREFIXES):
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": {"code": code, "message": message}})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response(request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def client_closed(_: Request, exc: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; the status is for the access log and metrics (nginx's 499).
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> Response:
        # Too many pixels is about size, like an oversized body; a format other than the declared
        # Content-Type is a media-type problem; the rest is unprocessable content.
        status = (
            413 if isinstance(exc, ImageTooLarge) else 415 if isinstance(exc, ImageFormatMismatch) else 422
        )
        return respond(request, status, exc.code, str(exc))

    @app.exception_handler(DatasetError)
    async def dataset_error(request: Request, exc: DatasetError) -> Response:
        # The messages name server paths: they go to the log, the client gets a fixed text.
        if isinstance(exc, DatasetNotFound):
            logger.warning("dataset not found: %s", exc)
            return respond(request, 404, "dataset_not_found", "the test set is not installed on this server")
        logger.error("dataset unreadable: %s", exc)
        return respond(request, 500, "dataset_error", "the test set on this server cannot be read")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        # The message names server paths: it goes to the log, the client gets a fixed text.
        logger.error("model store: %s", exc)
        return respond(request, 503, "store_unavailable", "the model store cannot be read right now")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        return respond(request, 422, "invalid_request", message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return respond(request, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, 500, "internal_error", "internal server error")
