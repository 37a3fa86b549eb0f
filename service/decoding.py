"""Request bodies to model input: parsed once into NumPy, with shape, range and NaN checks.

No per-number pydantic validation on this path: orjson parses the body and NumPy checks the
array as a whole, which is what keeps a one-image JSON request cheap.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request

from core.preprocessing import (
    PIXELS_PER_IMAGE,
    InvalidInput,
    InvalidPixels,
    InvertMode,
    as_batch,
    decode_image,
)
from service.errors import BadRequest, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.multipart import parse_multipart

IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/webp": "WEBP",
}
BINARY_TYPES = ("application/octet-stream", "application/x-npy")
MAX_FORM_FIELDS = 100


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_instances: int
    max_bulk_instances: int
    max_image_pixels: int


@dataclass(frozen=True)
class Decoded:
    images: np.ndarray  # (N, 28, 28) float32
    fields: dict[str, Any]  # the other JSON members or form fields (labels, dataset, ...)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_request(request: Request, limits: Limits, invert: InvertMode) -> Decoded:
    """Dispatch on Content-Type: JSON instances, multipart image files, one raw image, or raw pixels."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limits.max_body_bytes)
    if media_type == "application/json":
        return decode_json(body, limits.max_instances)
    if media_type == "multipart/form-data":
        return _decode_form(body, request.headers["content-type"], limits, invert)
    if media_type.startswith("image/"):
        if media_type not in IMAGE_TYPES:
            raise UnsupportedMediaType(f"unsupported image type {media_type}")
        return Decoded(_decode_image(body, IMAGE_TYPES[media_type], limits, invert)[None], {})
    if media_type in BINARY_TYPES:
        return Decoded(decode_binary(body, media_type, limits.max_bulk_instances), {})
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media_type or '(none)'}; send application/json, multipart/form-data, "
        "image/*, application/octet-stream or application/x-npy"
    )


def decode_json(body: bytes, max_instances: int) -> Decoded:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(document, dict):
        raise InvalidRequest("the JSON body must be an object", code="invalid_request")
    fields = {key: value for key, value in document.items() if key != "instances"}
    instances = document.get("instances")
    if instances is None:
        return Decoded(np.empty((0, 28, 28), np.float32), fields)
    if not isinstance(instances, list):
        raise InvalidPixels("instances must be a list of images")
    check_count(len(instances), max_instances)
    return Decoded(pixels_from_json(instances), fields)


def pixels_from_json(instances: list[Any]) -> np.ndarray:
    try:
        array = np.array(instances)
    except (ValueError, TypeError):
        # Mixed layouts (some flat, some nested) cannot form one array; convert them one by one.
        return np.concatenate([as_batch(_numeric(instance)[None]) for instance in instances])
    return as_batch(_numeric(array) if array.dtype.kind not in "iuf" else array)


def _numeric(value: Any) -> np.ndarray:
    try:
        array = np.array(value)
    except (ValueError, TypeError) as exc:
        raise InvalidPixels("each instance must be 28x28 nested or 784 flat numbers") from exc
    if array.dtype.kind not in "iuf":
        raise InvalidPixels(f"pixel values must be numbers, received {_describe(array)}")
    return array


def _describe(array: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "O": "nulls, objects or ragged lists"}.get(
        array.dtype.kind, str(array.dtype)
    )


def decode_binary(body: bytes, media_type: str, max_images: int) -> np.ndarray:
    """application/octet-stream: N x 784 uint8 pixels, row-major; application/x-npy: a NumPy .npy array."""
    if media_type == "application/x-npy":
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadRequest(f"the body is not a valid .npy array ({exc})", code="invalid_npy") from exc
    else:
        if len(body) % PIXELS_PER_IMAGE:
            raise InvalidPixels(f"an octet-stream body must be N x 784 bytes, received {len(body)} bytes")
        array = np.frombuffer(body, dtype=np.uint8).reshape(-1, PIXELS_PER_IMAGE)
    if array.ndim >= 1:
        check_count(array.shape[0], max_images)
    return as_batch(array)


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidRequest("no images were given", code="empty_instances")
    if count > limit:
        raise InvalidRequest(
            f"{count} images in one request, more than the limit of {limit}", code="too_many_instances"
        )


def _decode_form(body: bytes, content_type: str, limits: Limits, invert: InvertMode) -> Decoded:
    parts = parse_multipart(body, content_type, max_parts=limits.max_instances + MAX_FORM_FIELDS)
    files = [part for part in parts if part.is_file]
    fields = {part.name: part.data.decode("utf-8", "replace") for part in parts if not part.is_file}
    check_count(len(files), limits.max_instances)
    images = []
    for part in files:
        # A part declared as a specific image type must hold that type; octet-stream or none means "any".
        try:
            images.append(_decode_image(part.data, IMAGE_TYPES.get(part.content_type), limits, invert))
        except InvalidInput as exc:
            raise type(exc)(f"{part.filename or 'file'}: {exc}") from exc
    return Decoded(np.stack(images), fields)


def _decode_image(data: bytes, declared_format: str | None, limits: Limits, invert: InvertMode) -> np.ndarray:
    return decode_image(
        data, invert=invert, max_pixels=limits.max_image_pixels, expected_format=declared_format
    )
