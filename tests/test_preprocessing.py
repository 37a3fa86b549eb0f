from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.preprocessing import (
    ImageFormatMismatch,
    ImageTooLarge,
    InvalidImage,
    InvalidPixels,
    as_batch,
    decode_image,
)
from tests.helpers import image_bytes, png_declaring


def garment(height: int = 28, width: int = 28) -> np.ndarray:
    """A light shape on a dark background, as in Fashion-MNIST."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 220
    return pixels


def test_a_28x28_png_decodes_to_its_exact_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    pixels[0, :] = pixels[-1, :] = pixels[:, 0] = pixels[:, -1] = 0  # a dark border: no inversion
    decoded = decode_image(image_bytes(pixels))
    assert decoded.dtype == np.float32 and decoded.shape == (28, 28)
    assert np.array_equal(decoded, pixels.astype(np.float32))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_every_supported_format_decodes(fmt: str) -> None:
    decoded = decode_image(image_bytes(garment(), fmt, mode="RGB" if fmt == "JPEG" else "L"))
    assert decoded.shape == (28, 28)
    assert decoded[14, 14] > 150 and decoded[0, 0] < 40


def test_a_dark_on_light_photo_is_inverted_automatically() -> None:
    photo = 255 - garment(300, 200)  # dark garment on a white background, portrait
    decoded = decode_image(image_bytes(photo, "JPEG", mode="RGB", quality=95))
    assert decoded[0, 14] < 30  # the background is dark, as in training data
    assert decoded[14, 14] > 180  # the garment is light


def test_invert_can_be_forced_either_way() -> None:
    data = image_bytes(garment())
    assert decode_image(data, invert="true")[14, 14] < 40
    assert decode_image(data, invert="false")[14, 14] > 180
    assert decode_image(image_bytes(255 - garment()), invert="false")[0, 0] > 200


def test_the_longest_side_fits_and_the_image_is_centred() -> None:
    wide = np.full((50, 200), 200, np.uint8)  # 4:1, light: fills the width, 7 rows tall, centred
    decoded = decode_image(image_bytes(wide), invert="false")
    rows = np.nonzero(decoded.mean(axis=1) > 100)[0]
    assert decoded[14].min() > 150
    assert 5 <= len(rows) <= 9 and abs(rows.mean() - 13.5) < 1


def test_transparent_areas_count_as_background() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = (30, 30, 30, 255)  # an opaque dark garment, the rest transparent
    decoded = decode_image(image_bytes(rgba, mode="RGBA"))
    assert decoded[0, 0] < 30 and decoded[14, 14] > 200


def test_not_an_image_is_rejected() -> None:
    with pytest.raises(InvalidImage, match="not a recognised image"):
        decode_image(b"hello, this is text")


def test_an_empty_body_is_rejected() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_image_is_rejected(fmt: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8)
    data = image_bytes(noise, fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("side", "message"), [(6000, "6000x6000 pixels"), (20000, "more pixels than the limit")]
)
def test_a_decompression_bomb_is_refused_before_decoding(side: int, message: str) -> None:
    # A valid PNG header announcing side x side pixels; decoding 20000 x 20000 would take 400 MB.
    with pytest.raises(ImageTooLarge, match=message):
        decode_image(png_declaring(side, side), max_pixels=25_000_000)


def test_unsupported_formats_are_refused() -> None:
    with pytest.raises(InvalidImage, match="unsupported image format TIFF"):
        decode_image(image_bytes(garment(), "TIFF"))


def test_a_declared_format_must_match_the_data() -> None:
    with pytest.raises(ImageFormatMismatch, match="declared as PNG but the data is JPEG"):
        decode_image(image_bytes(garment(), "JPEG"), expected_format="PNG")


def test_pixel_batches_accept_nested_and_flat_layouts() -> None:
    assert as_batch(np.zeros((3, 28, 28))).shape == (3, 28, 28)
    assert as_batch(np.zeros((2, 784), np.uint8)).dtype == np.uint8  # kept compact until inference
    assert as_batch(np.zeros((2, 784), np.int64)).dtype == np.float32


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 27, 28)), "received shape \\(27, 28\\)"),
        (np.zeros((1, 783)), "received shape \\(783,\\)"),
        (np.zeros((0, 784)), "no images"),
        (np.full((1, 784), np.nan), "NaN or Infinity"),
        (np.full((1, 784), np.inf), "NaN or Infinity"),
        (np.full((1, 784), 256.0), "within 0-255, received a range of 256 to 256"),
        (np.full((1, 784), -1), "received a range of -1 to -1"),
        (np.array([["a"] * 784]), "must be numbers"),
    ],
)
def test_invalid_pixel_batches_say_what_is_wrong(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidPixels, match=message):
        as_batch(array)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 4), st.sampled_from([784, 28])), elements=st.floats(0, 255))
)
def test_any_in_range_flat_batch_is_accepted_unchanged(pixels: np.ndarray) -> None:
    if pixels.shape[1] == 28:
        with pytest.raises(InvalidPixels):
            as_batch(pixels)
        return
    batch = as_batch(pixels)
    assert batch.shape == (len(pixels), 28, 28)
    assert np.allclose(batch.reshape(len(pixels), -1), pixels, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_either_decode_or_raise_invalid_image(data: bytes) -> None:
    try:
        image = decode_image(data)
    except (InvalidImage, ImageTooLarge):
        return
    assert image.shape == (28, 28)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]),
    st.sampled_from(["PNG", "BMP", "GIF", "WEBP", "JPEG"]),
)
def test_any_size_mode_and_format_becomes_28x28_in_range(
    width: int, height: int, mode: str, fmt: str
) -> None:
    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 50, 50)).convert(mode)
    buffer = __import__("io").BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this mode cannot be saved in this format at all
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == (28, 28) and decoded.min() >= 0 and decoded.max() <= 255
