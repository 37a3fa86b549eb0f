"""What the tests share: real test data made cheaply (IDX files, a learnable synthetic dataset, image
bytes), apps and servers around a store, the training CLI, and waiting on conditions."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.datasets import FASHION_MNIST_FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from core.engines import quiet_tensorflow
from core.store import METADATA_FILE, ModelStore

REPO = Path(__file__).resolve().parent.parent
BUNDLED_STORE = REPO / "models"
DEPLOY_TOOLS = REPO / ".venv-deploy"


def require_tool(name: str, install: str) -> str:
    """The path of a command-line tool the test needs: on PATH or in the deploy tools' venv
    (`make deploy-tools`). Missing, the test skips (which fails under CI: it installs everything)."""
    found = shutil.which(name) or shutil.which(name, path=str(DEPLOY_TOOLS / "bin"))
    if found is None:
        pytest.skip(f"{name} not installed ({install})")
    return found


def make_client(store: Path, **overrides: object) -> Iterator[TestClient]:
    """An app around the store (settings overridden as given), once it is ready."""
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model_store=store, **overrides)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200)
        yield client


def republish(root: Path, *, corrupt: str | None = None, **metadata: Any) -> int:
    """Publish a copy of version 1 as a new version, optionally with a corrupted file or changed metadata."""
    store = ModelStore(root, "fashion-mnist")
    with store.staging() as staging:
        shutil.copytree(store.version_dir(1), staging, dirs_exist_ok=True)
        (staging / METADATA_FILE).unlink()
        if corrupt:
            (staging / corrupt).write_bytes(b"\x00corrupt")
        meta = store.read_metadata(1).model_copy(update=metadata)
        return store.publish(staging, meta)


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m training ARGS` in a subprocess; with check, it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)],
        cwd=REPO,
        env=quiet_tensorflow(dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def synthetic_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class k is a bright full-width band 2k+2 rows high, centred, on dim noise: easy to learn in a
    few epochs, and unchanged by the upload conversion (trimmed to the band, it fits 28 wide again)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        height = 2 * int(label) + 2
        top = (28 - height) // 2
        images[i, top : top + height, :] = 230
    return images.astype(np.uint8)


def write_fashion_mnist(folder: Path, train_size: int = 600, test_size: int = 200) -> Path:
    """The four Fashion-MNIST IDX .gz files with synthetic content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, size in (("train", train_size), ("test", test_size)):
        labels = rng.integers(0, 10, size=size).astype(np.uint8)
        write_idx(
            folder / FASHION_MNIST_FILES[f"{split}_images"],
            synthetic_images(labels, seed=size),
            IDX_IMAGES_MAGIC,
        )
        write_idx(folder / FASHION_MNIST_FILES[f"{split}_labels"], labels, IDX_LABELS_MAGIC)
    return folder


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", mode: str = "L", **save_options: object) -> bytes:
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if mode != image.mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) declares width x height grayscale pixels, with tiny data."""

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, interval_s: float = 0.02) -> None:
    """Wait on a condition with a deadline (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def status_of(url: str) -> int:
    """The status of a GET, or 0 when nothing answered (a server not listening yet, or gone)."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): (H, W) gray or (H, W, 3) RGB."""
    colour_type = 0 if pixels.ndim == 2 else 2
    height, width = pixels.shape[:2]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, colour_type, 0, 0, 0])
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def tiff_exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A little-endian TIFF EXIF block from raw IFD entries (tag, type, count, 4 value bytes), so that
    a test can write the malformed tags a real camera or editor sometimes does."""
    ifd = len(entries).to_bytes(2, "little")
    for tag, kind, count, value in entries:
        ifd += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + count.to_bytes(4, "little") + value
    return b"II*\x00" + (8).to_bytes(4, "little") + ifd + b"\x00\x00\x00\x00"


ORIENTATION_6 = (0x0112, 3, 1, (6).to_bytes(2, "little") + b"\x00\x00")  # rotate 90 degrees clockwise
