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
    InvalidInput,
    InvalidPixels,
    as_batch,
    decode_image,
)
from tests.helpers import ORIENTATION_6, image_bytes, png16, png_declaring, tiff_exif


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
    assert decoded[0, 0] == 0  # the background is black, as in training data
    assert decoded[14, 14] > 180  # the garment is light


def test_invert_can_be_forced_either_way() -> None:
    data = image_bytes(garment())
    assert decode_image(data, invert="true")[14, 14] < 40
    assert decode_image(data, invert="false")[14, 14] > 180
    assert decode_image(image_bytes(255 - garment()), invert="false")[0, 0] > 200


def test_the_item_is_trimmed_its_longest_side_fitted_and_centred() -> None:
    canvas = np.zeros((160, 400), np.uint8)
    canvas[10:60, 150:350] = 200  # a 4:1 item off-centre on a large dark canvas
    decoded = decode_image(image_bytes(canvas))
    rows = np.nonzero(decoded.mean(axis=1) > 100)[0]
    assert decoded[14].min() > 150  # it fills the width once its margins are trimmed
    assert 6 <= len(rows) <= 8 and abs(rows.mean() - 13.5) <= 1  # 7 rows tall, centred


def test_transparent_areas_count_as_background() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[5:35, 15:25] = (30, 30, 30, 255)  # an opaque dark garment, the rest transparent
    decoded = decode_image(image_bytes(rgba, mode="RGBA"))
    assert decoded[0, 0] == 0 and decoded[14, 14] > 200


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


# ---- 16-bit images, EXIF orientation and decode bounds (hardening review findings 5 and 6) ----


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = (garment().astype(np.uint16) * 257)[:, :]  # 220 -> 56540 of 65535
    pixels[0, 0] = 65535
    decoded = decode_image(png16(pixels), invert="false")
    assert decoded[14, 14] == 220 and decoded[0, 0] == 255  # Pillow's own conversion gives 255 for both


def test_16_bit_rgb_is_scaled_not_clipped() -> None:
    rgb = np.repeat((garment().astype(np.uint16) * 257)[:, :, None], 3, axis=2)
    decoded = decode_image(png16(rgb), invert="false")
    assert decoded[14, 14] == 220 and decoded[0, 0] == 0


def test_16_bit_dark_on_light_is_inverted_like_8_bit() -> None:
    light = (255 - garment()).astype(np.uint16) * 257
    assert np.array_equal(decode_image(png16(light)), decode_image(image_bytes(255 - garment())))


def upright_strip() -> np.ndarray:
    """An item 10 wide, 20 tall, bright at the top, on a dark margin: rotated 90 degrees clockwise,
    the bright part is on the right."""
    pixels = np.zeros((24, 14), np.uint8)
    pixels[2:22, 2:12] = 90
    pixels[2:7, 2:12] = 255
    return np.kron(pixels, np.ones((8, 8), np.uint8))  # large enough that JPEG's ringing is no matter


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(image_bytes(upright_strip(), fmt, exif=exif), invert="false")
    assert decoded[14, 22:].mean() > 200 and decoded[14, :6].mean() < 120


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_mistyped_exif_tag_does_not_fail_the_image(fmt: str) -> None:
    # XResolution written as text: ImageOps.exif_transpose raises TypeError re-encoding it (a 500 before).
    exif = tiff_exif(ORIENTATION_6, (0x011A, 2, 4, b"abc\x00"))
    data = image_bytes(upright_strip(), fmt, exif=b"Exif\x00\x00" + exif if fmt == "JPEG" else exif)
    decoded = decode_image(data, invert="false")
    assert decoded[14, 22:].mean() > 200  # and the orientation still counts


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_unreadable_exif_means_no_orientation(fmt: str) -> None:
    data = image_bytes(upright_strip(), fmt, exif=b"not a TIFF block at all")
    decoded = decode_image(data, invert="false")
    assert decoded[:6, 14].mean() > 200  # as stored: bright at the top


def test_images_with_an_absurd_side_are_refused_from_the_header() -> None:
    # 1 x 25,000,000 is within the pixel limit, but Pillow would spend 200 MB and seconds on its rows.
    with pytest.raises(ImageTooLarge, match="no side may exceed"):
        decode_image(png_declaring(1, 25_000_000))


def test_pixel_values_are_range_checked_before_the_cast_to_float32() -> None:
    with pytest.raises(InvalidPixels, match="within 0-255"):
        as_batch(np.full((1, 784), 255.00000001))  # float32(255.00000001) == 255.0
    assert as_batch(np.full((1, 784), 255.0)).max() == 255


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["JPEG", "PNG", "WEBP"]), st.data())
def test_mutated_images_with_exif_decode_or_raise_a_client_error(fmt: str, data: st.DataObject) -> None:
    """Fuzzing real images that carry EXIF (the blocks a mutation must hit to find the EXIF cases)."""
    exif = tiff_exif(ORIENTATION_6, (0x011A, 5, 1, (26).to_bytes(4, "little")), (0x0131, 2, 4, b"cam\x00"))
    original = bytearray(
        image_bytes(upright_strip(), fmt, exif=b"Exif\x00\x00" + exif if fmt == "JPEG" else exif)
    )
    start = original.find(b"II*\x00")
    for _ in range(data.draw(st.integers(1, 8))):
        # Most mutations land in the EXIF block (offsets, types, counts), the rest anywhere.
        low = start if data.draw(st.booleans()) else 0
        position = data.draw(st.integers(low, min(len(original) - 1, low + 80)))
        original[position] = data.draw(st.integers(0, 255))
    try:
        image = decode_image(bytes(original))
    except InvalidInput:
        return
    assert image.shape == (28, 28)


# ---- the Fashion-MNIST conversion of uploads (issue 9) ----


def item(seed: int = 0) -> np.ndarray:
    """A dataset-like item: a light, shaded, irregular shape whose longest side is 28."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    half_width = 6 + 4 * np.sin(yy / 9 + rng.uniform(0, 3))  # a waisted silhouette
    shape = np.abs(xx - 13.5) < half_width
    shading = 120 + 100 * (yy / 27) + rng.normal(0, 8, (28, 28))
    return np.where(shape, np.clip(shading, 1, 255), 0).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_a_product_photo_becomes_the_dataset_item_it_shows(seed: int) -> None:
    from bench.photos import product_photo

    original = item(seed)
    photo = product_photo(original, np.random.default_rng(seed))  # margins, tint, noise, JPEG or PNG
    decoded = decode_image(photo.data)
    assert np.abs(decoded - original).mean() < 12  # resampling, noise and JPEG, nothing more
    assert decoded[0, 0] == 0 and decoded[27, 27] == 0  # the background is exactly black


@pytest.mark.parametrize("background", [(255, 255, 255), (240, 228, 205), (205, 220, 240), (180, 180, 180)])
def test_light_and_tinted_backgrounds_are_taken_out(background: tuple[int, int, int]) -> None:
    canvas = np.empty((300, 240, 3), np.uint8)
    canvas[:] = background
    canvas[40:240, 60:160] = (20, 30, 90)  # a navy garment, off-centre
    decoded = decode_image(image_bytes(canvas, "PNG", mode="RGB"))
    rows, cols = np.nonzero(decoded > 50)
    assert (rows.min(), rows.max()) == (0, 27)  # trimmed: the item's height fills the frame
    assert 6 <= cols.min() <= 8 and 20 <= cols.max() <= 21  # and it is centred
    assert decoded[0, 0] == 0 and decoded[14, 14] > 150


def test_a_light_item_on_a_dark_background_is_not_inverted() -> None:
    canvas = np.full((200, 300), 15, np.uint8)
    canvas[20:180, 100:180] = 210
    decoded = decode_image(image_bytes(canvas))
    assert decoded[14, 14] > 190 and decoded[14, 0] == 0


def test_an_item_cut_off_by_the_frame_is_trimmed_on_the_other_sides() -> None:
    photo = np.full((120, 200), 250, np.uint8)
    photo[30:, 40:100] = 40  # runs off the bottom edge
    decoded = decode_image(image_bytes(photo))
    rows, cols = np.nonzero(decoded > 100)
    assert (rows.min(), rows.max()) == (0, 27) and cols.max() - cols.min() + 1 in (18, 19, 20)


def test_very_small_and_very_large_photos_convert() -> None:
    tiny = np.full((5, 3), 255, np.uint8)
    tiny[1:4, 1] = 0
    assert decode_image(image_bytes(tiny))[14, 14] > 200  # one dark stroke, enlarged to 28 tall
    large = np.full((4000, 3000), 245, np.uint8)
    large[500:3500, 1000:2000] = 30
    decoded = decode_image(image_bytes(large, "JPEG", quality=90))
    assert decoded[14, 14] > 200 and decoded[14, 0] == 0


@pytest.mark.parametrize(
    "pixels",
    [
        np.full((60, 40), 255, np.uint8),
        np.zeros((60, 40), np.uint8),
        np.full((60, 40), 128, np.uint8),
        np.clip(np.random.default_rng(0).normal(240, 3, (60, 40)), 0, 255).astype(np.uint8),
    ],
    ids=["white", "black", "grey", "white-with-sensor-noise"],
)
def test_a_blank_photo_is_all_background(pixels: np.ndarray) -> None:
    assert not decode_image(image_bytes(pixels)).any()


def test_forced_inversion_still_decides_the_polarity() -> None:
    photo = np.full((100, 60), 250, np.uint8)
    photo[10:90, 15:45] = 30
    assert decode_image(image_bytes(photo), invert="true")[14, 14] > 200  # as auto would
    kept = decode_image(image_bytes(photo), invert="false")  # light background kept as sent
    assert kept[14, 14] < 60 and kept[14, 0] > 200
