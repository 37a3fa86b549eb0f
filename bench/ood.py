"""Out-of-distribution sets: inputs unlike anything the model was trained on, as clients send them.

Each set is built reproducibly (a seed) and returned as model input, made the way the service makes
it: image sets go through the service's own conversion (`core.preprocessing.decode_image`), pixel
sets are the pixels a client would post.

- digits and letters: rendered dark on white in DejaVu fonts (shipped with matplotlib), uploaded
  as PNG images;
- noise: uniform, Gaussian, salt-and-pepper and smooth blobs, posted as pixels;
- blank: all-black, all-white, flat grey and near-flat pixels, and flat images of any colour;
- natural: crops of the photographs shipped with scikit-image (astronaut, coffee, a cat, a rocket,
  motorcycles, grass, gravel, bricks, ...), uploaded as PNG images;
- inverted items: Fashion-MNIST test items posted as dark-on-light pixels (the wrong polarity).
"""

from __future__ import annotations

import importlib.util
import io
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from core.preprocessing import INPUT_SHAPE, MAX_PIXEL, decode_image

NATURAL_IMAGES = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif-Bold.ttf",
)


def ood_sets(count: int, seed: int = 0, test_items: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every set that can be built here, `count` images each, as (count, 28, 28) float32 model input."""
    builders: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
        "digits and letters": rendered_characters,
        "noise": noise,
        "blank and near-blank": blank,
    }
    if natural_image_files():
        builders["natural images"] = natural_crops
    sets = {
        name: build(count, np.random.default_rng(seed + i))
        for i, (name, build) in enumerate(builders.items())
    }
    if test_items is not None:
        sets["inverted items"] = MAX_PIXEL - test_items[:count].astype(np.float32)
    return sets


def uploaded(image: Image.Image) -> np.ndarray:
    """What the service makes of this image uploaded as a PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return decode_image(buffer.getvalue())


def rendered_characters(count: int, rng: np.random.Generator) -> np.ndarray:
    fonts_dir = Path(_package_dir("matplotlib")) / "mpl-data" / "fonts" / "ttf"
    characters = string.digits + string.ascii_letters
    images = []
    for _ in range(count):
        font = ImageFont.truetype(
            str(fonts_dir / FONTS[rng.integers(len(FONTS))]), int(rng.integers(40, 160))
        )
        text = characters[rng.integers(len(characters))]
        canvas = Image.new("L", (200, 200), 255)
        ImageDraw.Draw(canvas).text((100, 100), text, fill=int(rng.integers(0, 80)), font=font, anchor="mm")
        images.append(uploaded(canvas.rotate(float(rng.uniform(-15, 15)), fillcolor=255)))
    return np.stack(images)


def noise(count: int, rng: np.random.Generator) -> np.ndarray:
    kinds = [
        lambda: rng.uniform(0, MAX_PIXEL, INPUT_SHAPE),
        lambda: np.clip(rng.normal(rng.uniform(40, 215), rng.uniform(20, 80), INPUT_SHAPE), 0, MAX_PIXEL),
        lambda: MAX_PIXEL * (rng.random(INPUT_SHAPE) < rng.uniform(0.05, 0.5)),
        lambda: _blobs(rng),
    ]
    return np.stack([kinds[i % len(kinds)]() for i in range(count)]).astype(np.float32)


def _blobs(rng: np.random.Generator) -> np.ndarray:
    coarse = Image.fromarray(rng.uniform(0, MAX_PIXEL, (7, 7)).astype(np.uint8))
    smooth = coarse.resize(INPUT_SHAPE, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    return np.asarray(smooth, dtype=np.float32)


def blank(count: int, rng: np.random.Generator) -> np.ndarray:
    images = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            images.append(np.full(INPUT_SHAPE, float(rng.choice([0.0, MAX_PIXEL]))))
        elif kind == 1:
            images.append(np.full(INPUT_SHAPE, rng.uniform(0, MAX_PIXEL)))
        elif kind == 2:
            level = rng.uniform(0, MAX_PIXEL)
            images.append(np.clip(level + rng.normal(0, rng.uniform(1, 8), INPUT_SHAPE), 0, MAX_PIXEL))
        else:
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            images.append(uploaded(Image.new("RGB", (int(rng.integers(20, 400)),) * 2, colour)))
    return np.stack(images).astype(np.float32)


def natural_image_files() -> list[Path]:
    data = Path(_package_dir("skimage") or "/nonexistent") / "data"
    return [data / name for name in NATURAL_IMAGES if (data / name).is_file()]


def natural_crops(count: int, rng: np.random.Generator) -> np.ndarray:
    photos = [Image.open(path).convert("RGB") for path in natural_image_files()]
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(40, min(photo.size)))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        images.append(uploaded(photo.crop((left, top, left + side, top + side))))
    return np.stack(images)


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    locations = spec.submodule_search_locations if spec else None
    return locations[0] if locations else ""
