"""Turning images and pixel arrays into model input: the one place both training and serving do it.

The model takes raw pixels (0-255, light object on a dark background, 28x28) and scales them itself,
so everything here produces float32 arrays in that range and never rescales.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 28
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
MIN_PIXEL = 0.0
MAX_PIXEL = 255.0
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000

InvertMode = Literal["auto", "true", "false"]


class InvalidInput(ValueError):
    """Input that cannot become model input; `code` names the kind of problem for API clients."""

    code = "invalid_input"


class InvalidImage(InvalidInput):
    code = "invalid_image"


class ImageTooLarge(InvalidInput):
    code = "image_too_large"


class InvalidPixels(InvalidInput):
    code = "invalid_pixels"


class ImageFormatMismatch(InvalidInput):
    code = "content_type_mismatch"


def decode_image(
    data: bytes,
    *,
    invert: InvertMode = "auto",
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    expected_format: str | None = None,
) -> np.ndarray:
    """Decode PNG/JPEG/GIF/BMP/WebP bytes of any size, mode or aspect into a (28, 28) float32 image.

    The image is converted to grayscale, inverted when it is dark-on-light (auto: its border is
    brighter than mid-grey), scaled so its longest side fits 28 pixels, and centred on black.
    With expected_format (e.g. "PNG", from a Content-Type), data in another format is refused.
    """
    image = _open_checked(data, max_pixels)
    if expected_format and image.format != expected_format:
        raise ImageFormatMismatch(f"declared as {expected_format} but the data is {image.format}")
    gray = _to_grayscale(image)
    if _should_invert(gray, invert):
        gray = ImageOps.invert(gray)
    if gray.size == INPUT_SHAPE:  # already model-sized (the common case for clients that resize)
        return np.asarray(gray, dtype=np.float32)
    fitted = ImageOps.contain(gray, INPUT_SHAPE, method=Image.Resampling.LANCZOS)
    canvas = Image.new("L", INPUT_SHAPE, 0)
    canvas.paste(fitted, ((IMAGE_SIZE - fitted.width) // 2, (IMAGE_SIZE - fitted.height) // 2))
    return np.asarray(canvas, dtype=np.float32)


def as_batch(pixels: np.ndarray) -> np.ndarray:
    """Validate raw pixel values as a batch: (N, 28, 28) or (N, 784), finite, within 0-255.

    Returns (N, 28, 28) uint8 for uint8 input, float32 otherwise; engines take float32 (np.float32(x)).
    """
    if pixels.dtype.kind not in "uif":
        raise InvalidPixels(f"pixel values must be numbers, received dtype {pixels.dtype}")
    if pixels.ndim == 2 and pixels.shape[1] == PIXELS_PER_IMAGE:
        pixels = pixels.reshape(-1, *INPUT_SHAPE)
    if pixels.ndim != 3 or pixels.shape[1:] != INPUT_SHAPE:
        raise InvalidPixels(
            f"each image must be 28x28 nested or 784 flat values, received shape {tuple(pixels.shape[1:])}"
        )
    if pixels.shape[0] == 0:
        raise InvalidPixels("no images were given")
    if pixels.dtype == np.uint8:
        return pixels  # always in range; a quarter of float32's memory while it waits in a queue
    batch = pixels.astype(np.float32, copy=False)
    if pixels.dtype.kind == "f" and not np.isfinite(batch).all():
        raise InvalidPixels("pixel values must be finite numbers (NaN or Infinity received)")
    low, high = float(batch.min()), float(batch.max())
    if low < MIN_PIXEL or high > MAX_PIXEL:
        raise InvalidPixels(f"pixel values must lie within 0-255, received a range of {low:g} to {high:g}")
    return batch


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("the image is empty")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is stricter than Pillow's bomb warning and reads the header only.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has more pixels than the limit of {max_pixels}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidImage("the data is not a recognised image (PNG, JPEG, GIF, BMP or WebP)") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {image.format}; use PNG, JPEG, GIF, BMP or WebP")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the {image.format} image is truncated or corrupt") from exc
    return image


def _to_grayscale(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, as on a product photo, and auto-invert then darkens them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


def _should_invert(gray: Image.Image, invert: InvertMode) -> bool:
    if invert != "auto":
        return invert == "true"
    pixels = np.asarray(gray)
    border_sum = (
        int(pixels[0].sum()) + int(pixels[-1].sum()) + int(pixels[:, 0].sum()) + int(pixels[:, -1].sum())
    )
    return border_sum / (2 * (pixels.shape[0] + pixels.shape[1])) > MAX_PIXEL / 2
