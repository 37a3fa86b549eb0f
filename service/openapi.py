"""What every route's OpenAPI documentation shares: the served-model reference, the error body and
its responses, and path parameters for routes that read them from the request themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str = Field(examples=["fashion-mnist"])
    version: int = Field(examples=[1])


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_pixels"])
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


def path_parameters(*names: str) -> dict[str, Any]:
    """openapi_extra for a route that reads its path parameters from the request itself (no parameter
    injection on the hot paths): without it the document names parameters no operation defines."""
    return {
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
        ]
    }
