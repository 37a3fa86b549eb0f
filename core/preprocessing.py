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
# Pillow keeps a pointer per row: a 1 x 25,000,000 image costs 200 MB and seconds before any pixel.
MAX_IMAGE_SIDE = 32_768

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

    open_image (header only, size-checked) followed by image_to_input (the decode itself).
    """
    return image_to_input(open_image(data, max_pixels, expected_format), invert)


def open_image(data: bytes, max_pixels: int, expected_format: str | None = None) -> Image.Image:
    """Read an image's header, refusing unsupported formats and sizes before any pixel is decoded.

    With expected_format (e.g. "PNG", from a Content-Type), data in another format is refused.
    """
    if not data:
        raise InvalidImage("the image is empty")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is stricter than Pillow's bomb warning and reads the header only.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image has more pixels than the limit of {max_pixels}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage("the data is not a recognised image (PNG, JPEG, GIF, BMP or WebP)") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"unsupported image format {image.format}; use PNG, JPEG, GIF, BMP or WebP")
    if expected_format and image.format != expected_format:
        raise ImageFormatMismatch(f"declared as {expected_format} but the data is {image.format}")
    width, height = image.size
    if pixel_count(image) > max_pixels:
        raise ImageTooLarge(f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ImageTooLarge(f"the image is {width}x{height}: no side may exceed {MAX_IMAGE_SIDE} pixels")
    return image


def pixel_count(image: Image.Image) -> int:
    """Pixels the decoder will produce, from the header alone."""
    width, height = image.size
    return width * height


def image_to_input(image: Image.Image, invert: InvertMode = "auto") -> np.ndarray:
    """Decode an opened image into model input: upright, 8-bit grayscale, light on dark, fitted to 28x28.

    The image is turned upright (EXIF orientation), converted to grayscale (16-bit images scaled,
    not clipped), inverted when it is dark-on-light (auto: its border is brighter than mid-grey),
    scaled so its longest side fits 28 pixels, and centred on black.
    """
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the {image.format} image is truncated or corrupt") from exc
    gray = _to_grayscale(_upright(image))
    if _should_invert(gray, invert):
        gray = ImageOps.invert(gray)
    if gray.size == INPUT_SHAPE:  # already model-sized (the common case for clients that resize)
        return np.asarray(gray, dtype=np.float32)
    scale = IMAGE_SIZE / max(gray.size)
    size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
    # reducing_gap: a fast box reduction first, then Lanczos on the small image; without it a
    # 1 x 25,000,000 image takes seconds to fit.
    fitted = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", INPUT_SHAPE, 0)
    canvas.paste(fitted, ((IMAGE_SIZE - fitted.width) // 2, (IMAGE_SIZE - fitted.height) // 2))
    return np.asarray(canvas, dtype=np.float32)


def as_batch(pixels: np.ndarray) -> np.ndarray:
    """Validate raw pixel values as a batch: (N, 28, 28) or (N, 784), finite, within 0-255.

    Returns (N, 28, 28) uint8 for uint8 input, float32 otherwise; engines take float32 (np.float32(x)).
    The range is checked on the values as sent, before the cast (255.00000001 is out of range).
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
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise InvalidPixels("pixel values must be finite numbers (NaN or Infinity received)")
    low, high = pixels.min(), pixels.max()
    if low < MIN_PIXEL or high > MAX_PIXEL:
        raise InvalidPixels(f"pixel values must lie within 0-255, received a range of {low:g} to {high:g}")
    return pixels.astype(np.float32, copy=False)


# EXIF orientation -> the transpose that makes the image upright.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; metadata that cannot be read counts as no orientation.

    Unlike ImageOps.exif_transpose this reads one tag and never re-encodes the EXIF block, so a
    mistyped tag elsewhere in it cannot fail the image.
    """
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # Pillow's EXIF parser raises many types for malformed metadata; it is optional
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


# Modes whose values are 16-bit (PNG's 16-bit grayscale opens as I;16 or I): scaled to 0-255.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_WIDE_MAX = 65535


def _to_grayscale(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GRAY_MODES:
        # convert("L") would clip every value above 255 to white; scale the 16-bit range instead.
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(
            np.rint(np.clip(wide, 0, _WIDE_MAX) * (MAX_PIXEL / _WIDE_MAX)).astype(np.uint8)
        )
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
