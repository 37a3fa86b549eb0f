"""Product photos made from Fashion-MNIST items: what real clients upload, with known labels.

Fashion-MNIST was made from product photos (a dark-ish item on a light studio background) by
trimming, fitting to 28 pixels and negating. `product_photo` runs that backwards with the mess of a
real upload added, so the service's conversion can be measured against the pixels of the same item:

- the item is enlarged (4-12x, smooth resampling) and drawn dark on a light background, its
  luminance exactly 255 minus the dataset's value;
- on a portrait canvas (height 1.1-1.6 x width) with margins of 5-60 % of the item on each side, so
  the item sits off-centre;
- lit by a tint (each channel 225-255: warm, cool or grey backgrounds), which also colours the item;
- with Gaussian sensor noise (sigma 0-6 levels) and saved as JPEG (quality 60-95) or PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Photo:
    data: bytes
    content_type: str


def product_photo(item: np.ndarray, rng: np.random.Generator) -> Photo:
    """One photo of a 28x28 dataset item (light on dark, 0-255) as an upload would arrive."""
    side = int(rng.integers(112, 337))
    dark_on_light = Image.fromarray((255 - np.asarray(item, dtype=np.float32)).astype(np.uint8))
    enlarged = np.asarray(dark_on_light.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    margins = (rng.uniform(0.05, 0.6, size=4) * side).astype(int)  # left, right, top, bottom
    width = side + margins[0] + margins[1]
    height = max(int(width * rng.uniform(1.1, 1.6)), side + margins[2] + margins[3])
    top = margins[2] + int(rng.integers(0, height - side - margins[2] - margins[3] + 1))
    canvas = np.full((height, width), 255.0, dtype=np.float32)
    canvas[top : top + side, margins[0] : margins[0] + side] = enlarged
    tint = rng.uniform(225, 255, size=3).astype(np.float32) / 255
    photo = canvas[..., None] * tint + rng.normal(0, rng.uniform(0, 6), size=(height, width, 3))
    image = Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
        return Photo(buffer.getvalue(), "image/jpeg")
    image.save(buffer, format="PNG")
    return Photo(buffer.getvalue(), "image/png")


def phone_photo(item: np.ndarray, size: tuple[int, int] = (600, 800), seed: int = 0) -> bytes:
    """A JPEG of the item filling about 70 % of a portrait frame of `size`, as a phone upload arrives
    (the benchmark's photo request)."""
    rng = np.random.default_rng(seed)
    width, height = size
    side = int(0.7 * width)
    dark_on_light = Image.fromarray((255 - np.asarray(item, dtype=np.float32)).astype(np.uint8))
    enlarged = np.asarray(dark_on_light.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    canvas = np.full((height, width), 255.0, dtype=np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    canvas[top : top + side, left : left + side] = enlarged
    photo = canvas[..., None] * np.array([0.97, 0.95, 0.92]) + rng.normal(0, 3, size=(height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(photo), 0, 255).astype(np.uint8), mode="RGB").save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()


def product_photos(items: np.ndarray, seed: int = 0) -> list[Photo]:
    rng = np.random.default_rng(seed)
    return [product_photo(item, rng) for item in items]


def conversion_figure(items: np.ndarray, path: str, seed: int = 4) -> None:
    """Photos of `items` above what the service makes of them (the README's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.preprocessing import decode_image

    photos = product_photos(items, seed=seed)
    figure, axes = plt.subplots(2, len(items), figsize=(1.6 * len(items), 3.8), dpi=100)
    for column, photo in enumerate(photos):
        shown = Image.open(io.BytesIO(photo.data))
        axes[0, column].imshow(shown)
        axes[0, column].set_title(f"{shown.width}x{shown.height} {shown.format}", fontsize=7)
        axes[1, column].imshow(decode_image(photo.data), cmap="gray", vmin=0, vmax=255)
        axes[1, column].set_title("28x28 model input", fontsize=7)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    import sys

    from core.datasets import load_fashion_mnist

    test = load_fashion_mnist(allow_download=False).test
    assert test is not None
    picks = [int(np.flatnonzero(test.labels == label)[0]) for label in range(0, 10, 2)]
    conversion_figure(test.images[picks], sys.argv[1] if len(sys.argv) > 1 else "docs/conversion.png")
