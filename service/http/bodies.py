"""Request bodies to model input: parsed once into NumPy, checked, and bounded in memory and time.

No per-number pydantic validation on this path: orjson parses the body and NumPy checks the
array as a whole, which is what keeps a one-image JSON request cheap.

Nothing slow runs on the event loop: each step says how large it is (bytes, pixels, parts) and the
decode pool (offload.py) runs it in place when that is cheap, in one of its threads otherwise. Image
sizes are read from their headers first, and a request's images together are held to
MAX_REQUEST_PIXELS before any pixel is decoded. Decoding counts against the request's deadline
(REQUEST_TIMEOUT_S from the moment its body has arrived): past it the client gets 504 and the
decoding stops at the next image.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson
from PIL import Image
from starlette.requests import Request

from core.preprocessing import (
    IMAGE_SIZE,
    PIXELS_PER_IMAGE,
    ImageTooLarge,
    InvalidInput,
    InvalidPixels,
    InvertMode,
    as_batch,
    image_to_input,
    open_image,
    pixel_count,
)
from service.errors import (
    BadRequest,
    InvalidRequest,
    PayloadTooLarge,
    Timeout,
    UnsupportedMediaType,
    brief,
)
from service.http.multipart import parse_multipart
from service.http.offload import DECODE_TIMEOUT, DecodePool, is_cheap
from service.http.validate import digits

IMAGE_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/webp": "WEBP",
}
JSON_TYPE = "application/json"
FORM_TYPE = "multipart/form-data"
NPY_TYPE = "application/x-npy"
OCTET_TYPE = "application/octet-stream"
MAX_FORM_FIELDS = 100
# JSON members, objects and strings a request may have beyond what its images and labels need.
JSON_SLACK = 64
NPY_MAX_HEADER_BYTES = 10_000

T = TypeVar("T")


class Limits(Protocol):
    """The bounds a body is decoded under: a view of the settings (Settings is one), not a copy."""

    @property
    def max_body_bytes(self) -> int: ...
    @property
    def max_instances(self) -> int: ...
    @property
    def max_bulk_instances(self) -> int: ...
    @property
    def max_image_pixels(self) -> int: ...
    @property
    def max_request_pixels(self) -> int: ...


@dataclass(frozen=True)
class Decoded:
    images: np.ndarray  # (N, 28, 28), uint8 as sent or float32; engines take float32
    fields: dict[str, Any]  # the other JSON members or form fields (labels, dataset, ...)
    deadline: float  # event-loop time by which the answer is due


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and (digits(declared, 20) or 0) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type_of(content_type: str) -> str:
    """The media type of a Content-Type, checked before a byte of the body is read (415 otherwise)."""
    media_type = content_type.split(";")[0].strip().lower()
    _check_media_type(media_type)
    return media_type


async def decode_body(
    body: bytes,
    content_type: str,
    media_type: str,
    limits: Limits,
    invert: InvertMode,
    pool: DecodePool,
    deadline: float,
    *,
    json_fields: frozenset[str] = frozenset(),
) -> Decoded:
    """Dispatch on Content-Type: JSON instances, multipart image files, one raw image, or raw pixels.

    media_type: media_type_of(content_type), checked before the body was read.
    json_fields: the JSON members allowed besides "instances"; any other is refused.
    """
    if media_type == FORM_TYPE or media_type.startswith("image/"):
        images, fields = await decode_uploads(body, content_type, media_type, limits, invert, pool, deadline)
        return Decoded(images, fields, deadline)

    def decode(_: threading.Event | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if media_type == JSON_TYPE:
            return decode_json(body, limits.max_instances, json_fields)
        return decode_binary(body, media_type, limits.max_bulk_instances), {}

    images, fields = await pool.offload(decode, deadline, size_bytes=len(body))
    return Decoded(images, fields, deadline)


def _check_media_type(media_type: str) -> None:
    if media_type in (JSON_TYPE, FORM_TYPE, NPY_TYPE, OCTET_TYPE) or media_type in IMAGE_TYPES:
        return
    if media_type.startswith("image/"):
        raise UnsupportedMediaType(f"unsupported image type {media_type}")
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media_type or '(none)'}; send application/json, multipart/form-data, "
        "image/*, application/octet-stream or application/x-npy"
    )


# ---- JSON ----


def parse_json(body: bytes, max_instances: int) -> Any:
    """A JSON document, refused before parsing when it holds more than max_instances images need."""
    if not is_cheap(size_bytes=len(body)):  # a small body cannot expand to much
        _check_json_size(body, max_instances)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})", code="invalid_json") from exc


def decode_json(
    body: bytes, max_instances: int, allowed_fields: frozenset[str] = frozenset()
) -> tuple[np.ndarray, dict[str, Any]]:
    document = parse_json(body, max_instances)
    if not isinstance(document, dict):
        raise InvalidRequest("the JSON body must be an object", code="invalid_request")
    unknown = sorted(set(document) - allowed_fields - {"instances"})
    if unknown:
        expected = ", ".join(sorted({"instances", *allowed_fields}))
        raise InvalidRequest(
            f"unknown member {brief(unknown[0])} in the JSON body; expected {expected}",
            code="unknown_field",
        )
    fields = {key: value for key, value in document.items() if key != "instances"}
    instances = document.get("instances")
    if instances is None:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.float32), fields
    if not isinstance(instances, list):
        raise InvalidPixels("instances must be a list of images")
    check_count(len(instances), max_instances)
    if may_hold_boolean(body) and has_boolean(instances):
        raise InvalidPixels("pixel values must be numbers, received a boolean")
    return pixels_from_json(instances), fields


def _check_json_size(body: bytes, max_instances: int) -> None:
    """Refuse, before parsing, a document larger than max_instances images need, in structure or in
    values (parsing 15 MiB of numbers holds the GIL for 0.2 s, however few images they turn out to be).

    Parsed JSON takes up to ~40 times its size in Python objects: an object costs 64 bytes for the
    three of `{},`, a list or a string about 50; the bytes that open them are counted against twice
    what the largest legitimate request needs (29 lists, a label and its quotes per image, a few
    members). Values are separated by commas: an image has 784, and its label (/evaluate) or the
    member of its object (/v1) one more; the commas are counted against what max_instances images
    have. Both counts are one pass over the bytes, without parsing.
    """
    structure = 2 * max_instances * (IMAGE_SIZE + 1 + 2) + JSON_SLACK
    values = max_instances * (PIXELS_PER_IMAGE + 2) + JSON_SLACK
    if len(body) - len(body.translate(None, b'{["')) > structure or body.count(b",") > values:
        raise InvalidRequest(
            f"the JSON body holds more values, objects, lists or strings than {max_instances} images "
            f"could need (at most {max_instances} images per request)",
            code="too_many_instances",
        )


def may_hold_boolean(body: bytes) -> bool:
    """Whether `true` or `false` may occur: a quick look at each "e", which numbers lack unless they
    have an exponent (then a plain search)."""
    if body.count(b"e") > JSON_SLACK:
        return b"true" in body or b"false" in body
    position = body.find(b"e")
    while position != -1:
        if body[position - 3 : position + 1] == b"true" or body[position - 4 : position + 1] == b"false":
            return True
        position = body.find(b"e", position + 1)
    return False


def has_boolean(instances: list[Any]) -> bool:
    pending: list[Any] = [instances]
    while pending:
        value = pending.pop()
        if isinstance(value, bool):
            return True
        if isinstance(value, list):
            pending.extend(value)
    return False


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


# ---- binary pixels ----


def decode_binary(body: bytes, media_type: str, max_images: int) -> np.ndarray:
    """application/octet-stream: N x 784 uint8 pixels, row-major; application/x-npy: a NumPy .npy array."""
    if media_type == NPY_TYPE:
        array = read_npy(body)
    else:
        if len(body) % PIXELS_PER_IMAGE:
            raise InvalidPixels(f"an octet-stream body must be N x 784 bytes, received {len(body)} bytes")
        array = np.frombuffer(body, dtype=np.uint8).reshape(-1, PIXELS_PER_IMAGE)
    if array.ndim >= 1:
        check_count(array.shape[0], max_images)
    return as_batch(array)


def read_npy(body: bytes) -> np.ndarray:
    """A numeric .npy array (format 1.0 or 2.0) viewed in place; its header is checked against its size
    before anything is allocated, and pickles are never loaded."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream, NPY_MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream, NPY_MAX_HEADER_BYTES)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    except (ValueError, TypeError, SyntaxError, EOFError, UnicodeDecodeError, tokenize.TokenError) as exc:
        raise BadRequest(f"the body is not a valid .npy array ({brief(exc)})", code="invalid_npy") from exc
    if dtype.kind not in "uif" or dtype.hasobject:
        raise InvalidPixels(f"pixel values must be numbers, received dtype {dtype}")
    count = math.prod(shape)
    data_bytes = len(body) - stream.tell()
    if count * dtype.itemsize != data_bytes:
        raise BadRequest(
            f"the .npy header declares shape {shape} ({count * dtype.itemsize} bytes of data), "
            f"the body has {data_bytes}",
            code="invalid_npy",
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise InvalidRequest("no images were given", code="empty_instances")
    if count > limit:
        raise InvalidRequest(
            f"{count} images in one request, more than the limit of {limit}", code="too_many_instances"
        )


# ---- image uploads ----


@dataclass(frozen=True)
class _Upload:
    name: str | None
    image: Image.Image  # opened: header read, pixels not decoded yet


async def decode_uploads(
    body: bytes,
    content_type: str,
    media_type: str,
    limits: Limits,
    invert: InvertMode,
    pool: DecodePool,
    deadline: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The images of a form or an image/* body, and the form's other fields."""
    # Each part costs its parsing, its header read and its decoder's set-up, however few its pixels
    # (585 GIFs of 1x1 in 64 KiB took 0.15 s): many parts go to the pool, counted before parsing by a
    # cheap upper bound (each delimiter after the first, the closing one included, starts "\n--").
    parts = body.count(b"\n--") if media_type == FORM_TYPE else 1
    uploads, fields = await pool.offload(
        lambda _: open_uploads(body, content_type, media_type, limits),
        deadline,
        size_bytes=len(body),
        items=parts,
    )
    images = await pool.offload(
        lambda cancelled: convert_uploads(uploads, invert, cancelled),
        deadline,
        pixels=sum(pixel_count(upload.image) for upload in uploads),
        items=len(uploads),
    )
    return images, fields


def open_uploads(
    body: bytes, content_type: str, media_type: str, limits: Limits
) -> tuple[list[_Upload], dict[str, Any]]:
    """The images of a multipart form or an image/* body, opened (headers only) and size-checked."""
    if media_type.startswith("image/"):
        files: list[tuple[str | None, bytes, str | None]] = [(None, body, IMAGE_TYPES[media_type])]
        fields: dict[str, Any] = {}
    else:
        parts = parse_multipart(body, content_type, max_parts=limits.max_instances + MAX_FORM_FIELDS)
        files = [
            (part.filename or "file", part.data, IMAGE_TYPES.get(part.content_type))
            for part in parts
            if part.is_file
        ]
        fields = {part.name: part.data.decode("utf-8", "replace") for part in parts if not part.is_file}
        check_count(len(files), limits.max_instances)
    return open_images(files, limits), fields


def open_images(files: Sequence[tuple[str | None, bytes, str | None]], limits: Limits) -> list[_Upload]:
    """(name, bytes, declared format) images opened (headers only), each and all together size-checked."""
    uploads, total = [], 0
    for name, data, declared_format in files:
        # A part declared as a specific image type must hold that type; octet-stream or none means "any".
        with _named(name):
            image = open_image(data, limits.max_image_pixels, declared_format)
        total += pixel_count(image)
        if total > limits.max_request_pixels:
            raise ImageTooLarge(
                f"the images of this request have more than {limits.max_request_pixels} pixels together; "
                "send fewer or smaller images per request"
            )
        uploads.append(_Upload(name, image))
    return uploads


def convert_uploads(
    uploads: list[_Upload], invert: InvertMode, cancelled: threading.Event | None
) -> np.ndarray:
    images = []
    for upload in uploads:
        if cancelled is not None and cancelled.is_set():
            raise Timeout(DECODE_TIMEOUT)
        try:
            with _named(upload.name):
                images.append(image_to_input(upload.image, invert))
        finally:
            upload.image.close()  # frees the decoded pixels now rather than when the request ends
    return np.stack(images)


@contextlib.contextmanager
def _named(name: str | None) -> Iterator[None]:
    """Prefix an image's input error with its file name, so the client knows which one failed."""
    try:
        yield
    except InvalidInput as exc:
        if name is None:
            raise
        raise type(exc)(f"{brief(name)}: {exc}") from exc
