"""Turning images and pixel arrays into model input: the one place both training and serving do it.

The model takes raw pixels (0-255, light object on a dark background, 28x28) and scales them itself,
so everything here produces float32 arrays in that range and never rescales.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 28
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE
MIN_PIXEL = 0.0
MAX_PIXEL = 255.0
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
# Pillow keeps a pointer per row: a 1 x 25,000,000 image costs 200 MB and seconds before any pixel.
MAX_IMAGE_SIDE = 32_768
# The item is found on a copy at most MASK_SIDE pixels on a side, and cut out of one at least CUT_SIDE
# on a side where the image is that large (and shorter than twice that): 8 to 16 per model pixel. A JPEG
# is decoded at 1/2, 1/4 or 1/8 scale, down to about CUT_SIDE. Photo accuracy on 3,000 of
# bench.quality's photos (seed 1): 0.894 this way; 0.892 when found at half this size (the cut's
# edges move by up to 4 pixels); 0.893 with both on one bilinear-resized copy of 224 (3 times slower);
# 0.895 on one of 448 (5 times slower); 0.884 with both at half this size.
MASK_SIDE = 8 * IMAGE_SIZE
CUT_SIDE = 8 * IMAGE_SIZE
# Fashion-MNIST's trimming threshold: within 5 % of the range of the background colour.
BACKGROUND_TOLERANCE = 0.05
NOISE_FACTOR = 1.5

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
    """Decode an opened image into model input the way Fashion-MNIST was made from product photos.

    Xiao, Rasul & Vollgraf (2017), section 2: trim the edges close to the background colour, fit the
    longest side to 28, centre, negate, 8-bit grayscale. Here, step by step:

    1. upright (EXIF orientation), transparency onto white, 16-bit values scaled to 8 bits;
    2. the background is the median colour of the border; pixels further from it than 5 % of the
       range (or three times the border's noise, when that is larger) are the item. This is judged on
       a copy at most MASK_SIDE pixels on a side;
    3. the image is trimmed to the item (cut from a copy at least CUT_SIDE on a side), turned
       grayscale, and what is not the item set to the background colour;
    4. the longest side is fitted to 28 pixels and centred, negated when the background is light
       (`invert`: auto, or forced true/false), the background driven to 0 and the item stretched so
       that full contrast against the background is 255.

    An image that is already 28x28 is taken as model-ready: it is only negated when light-on-dark.
    A blank image (no pixel away from the background) becomes all zeros.
    """
    _load(image)
    image = _upright(image)
    if image.size == INPUT_SHAPE:  # already model-sized (the common case for clients that resize)
        pixels = np.asarray(_to_grayscale(image), dtype=np.float32)
        light = _background(pixels[..., None])[0] > MAX_PIXEL / 2
        return MAX_PIXEL - pixels if _negate(light, invert) else pixels
    large = _shrink(_to_colour(image), CUT_SIDE)
    factor = -(-max(large.size) // MASK_SIDE)  # each mask pixel stands for factor x factor large ones
    colour = _as_array(large.reduce(factor) if factor > 1 else large)
    background = _background(colour)
    item = _item_mask(colour, background)
    if not item.any():
        return np.zeros(INPUT_SHAPE, dtype=np.float32)  # blank: nothing but background
    rows, cols = np.flatnonzero(item.any(axis=1)), np.flatnonzero(item.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = (left * factor, top * factor, min(right * factor, large.width), min(bottom * factor, large.height))
    level = float(_luminance(background[None, None, :])[0, 0])
    gray = _cut_out(large, box, item[top:bottom, left:right], factor, round(level))
    negate = _negate(level > MAX_PIXEL / 2, invert)
    return _fit(gray, negate, MAX_PIXEL - level if negate else level)


def _load(image: Image.Image) -> None:
    if image.format == "JPEG":
        # Decode at 1/2, 1/4 or 1/8 scale when both sides stay at least CUT_SIDE: a phone photo then
        # costs a fraction of a full decode.
        image.draft(image.mode, (CUT_SIDE, CUT_SIDE))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"the {image.format} image is truncated or corrupt") from exc


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """The image reduced by a whole factor (box averages) until its longest side is below 2 x side."""
    factor = max(image.size) // side
    return image.reduce(factor) if factor > 1 else image


def _as_array(image: Image.Image) -> np.ndarray:
    """(H, W, C) float32: a grayscale image has one channel."""
    array = np.asarray(image, dtype=np.float32)
    return array[..., None] if array.ndim == 2 else array


def _cut_out(
    large: Image.Image, box: tuple[int, int, int, int], item: np.ndarray, factor: int, level: int
) -> Image.Image:
    """The item's box of `large` in 8-bit grayscale, with every pixel outside the item (the mask is
    `factor` times smaller) set to the background's level."""
    gray = large.crop(box)
    gray = gray if gray.mode == "L" else gray.convert("L")
    inside = np.repeat(np.repeat(item, factor, axis=0), factor, axis=1)[: gray.height, : gray.width]
    return Image.composite(gray, Image.new("L", gray.size, level), Image.fromarray(inside))


def _background(colour: np.ndarray) -> np.ndarray:
    """The background colour: the per-channel median of the image's outermost pixels."""
    border = np.concatenate([colour[0], colour[-1], colour[1:-1, 0], colour[1:-1, -1]])
    return _median(border).astype(np.float32)


def _item_mask(colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background by more than its noise, judged on a 3x3 average.

    Averaging divides sensor noise by three; a pixel must also differ by half the threshold itself,
    so the average does not grow the item by a pixel. Pixels with no neighbour in the mask (specks)
    are dropped.
    """
    difference = colour - background
    raw = _channel_max(np.abs(difference))
    # The border's median distance measures the noise (most of the border is background): about
    # 1.2 sigma over three channels, and the average below leaves sigma / 3, so this is ~4 sigma.
    border = np.concatenate([raw[0], raw[-1], raw[1:-1, 0], raw[1:-1, -1]])
    threshold = max(BACKGROUND_TOLERANCE * MAX_PIXEL, NOISE_FACTOR * float(_median(border)))
    mask = (_channel_max(np.abs(_box_average(difference))) > threshold) & (raw > threshold / 2)
    neighbour = np.zeros_like(mask)
    neighbour[1:] |= mask[:-1]
    neighbour[:-1] |= mask[1:]
    neighbour[:, 1:] |= mask[:, :-1]
    neighbour[:, :-1] |= mask[:, 1:]
    return mask & neighbour


def _median(values: np.ndarray) -> np.ndarray:
    """The median along the first axis, as np.median, without its overhead (a tenth of a photo's
    conversion when the border has a few hundred pixels)."""
    ordered = np.sort(values, axis=0)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _channel_max(values: np.ndarray) -> np.ndarray:
    """The largest of each pixel's channels: (H, W, C) to (H, W). NumPy's max over a last axis of 3 is
    several times slower than comparing the channel planes."""
    largest = values[..., 0]
    for channel in range(1, values.shape[2]):
        largest = np.maximum(largest, values[..., channel])
    return largest


def _box_average(values: np.ndarray) -> np.ndarray:
    """Each pixel replaced by the mean of its 3x3 neighbourhood (edges repeated): sums of three rows,
    then of three columns of those."""
    padded = np.concatenate([values[:1], values, values[-1:]])
    padded = np.concatenate([padded[:, :1], padded, padded[:, -1:]], axis=1)
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9


def _luminance(colour: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's convert("L"); a one-channel image is its own luminance."""
    if colour.shape[2] == 1:
        return colour[..., 0].copy()
    return colour[..., 0] * 0.299 + colour[..., 1] * 0.587 + colour[..., 2] * 0.114


def _fit(gray: Image.Image, negate: bool, background: float) -> np.ndarray:
    """Scale the longest side to 28 and centre; negated if asked, and stretched so that a background on
    the dark side becomes 0 and full contrast against it 255, rounded to whole 8-bit values."""
    scale = IMAGE_SIZE / max(gray.size)
    width, height = (max(1, min(IMAGE_SIZE, round(side * scale))) for side in gray.size)
    size = (width, height)
    # reducing_gap: a box reduction first, then Lanczos over the last factor of 3 or less.
    fitted = np.asarray(gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.float32)
    if negate:
        fitted = MAX_PIXEL - fitted
    if background < MAX_PIXEL / 2:
        fitted = (fitted - background) * (MAX_PIXEL / (MAX_PIXEL - background))
        background = MIN_PIXEL
    canvas = np.full(INPUT_SHAPE, round(background), dtype=np.float32)
    top, left = (IMAGE_SIZE - size[1]) // 2, (IMAGE_SIZE - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = np.rint(np.clip(fitted, MIN_PIXEL, MAX_PIXEL))
    return canvas


def _negate(light_background: bool, invert: InvertMode) -> bool:
    return light_background if invert == "auto" else invert == "true"


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


_GRAY_MODES = frozenset({"1", "L"})


def _to_grayscale(image: Image.Image) -> Image.Image:
    return _to_colour(image).convert("L")


def _to_colour(image: Image.Image) -> Image.Image:
    """8-bit L for grayscale images, 8-bit RGB for everything else."""
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
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("L" if image.mode in _GRAY_MODES else "RGB")
