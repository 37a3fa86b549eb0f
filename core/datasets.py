"""Datasets: Fashion-MNIST from IDX files (with a fixed lookup order) and folders of images."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.preprocessing import INPUT_SHAPE, InvalidInput, InvertMode, decode_image
from core.safefiles import read_small_file

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_DIR"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024  # one photo of a folder to train on

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class DatasetError(Exception):
    """A dataset exists but is unusable (corrupt, truncated, mismatched)."""


class DatasetNotFound(DatasetError):
    """No copy of the dataset could be found."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8 or float32, raw 0-255 pixels
    labels: np.ndarray  # (N,) int

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Split:
        return self if count is None else Split(self.images[:count], self.labels[:count])


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split | None
    class_names: list[str]
    source: str
    checksums: dict[str, str] = field(default_factory=dict)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzipped or not) of unsigned bytes, checking magic number and size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot be read or decompressed ({exc})") from exc
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"{path}: magic number {magic}, expected {expected_magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated header ({len(raw)} of {header} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: size mismatch, header says {dims} ({expected} bytes of data), found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_fashion_mnist(data_dir: Path | None = None) -> Path | None:
    """The first folder holding the four IDX files: data_dir, $FASHION_MNIST_DIR, then the Debian package."""
    if data_dir is not None:
        _require_files(data_dir)
        return data_dir
    for candidate in (os.environ.get(ENV_VAR), SYSTEM_DIR):
        if candidate and all((Path(candidate) / name).is_file() for name in FASHION_MNIST_FILES.values()):
            return Path(candidate)
    return None


def load_fashion_mnist(data_dir: Path | None = None, *, allow_download: bool = True) -> Dataset:
    folder = find_fashion_mnist(data_dir)
    if folder is not None:
        return _load_idx_folder(folder)
    if not allow_download:
        raise DatasetNotFound(
            f"Fashion-MNIST not found: set {ENV_VAR} or install the Debian package dataset-fashion-mnist"
        )
    return _load_from_keras()


def load_fashion_mnist_test(data_dir: Path | None = None) -> Split:
    """Only the test split (10,000 images), from where load_fashion_mnist looks; never downloads."""
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        raise DatasetNotFound(
            f"Fashion-MNIST not found: set {ENV_VAR} or install the Debian package dataset-fashion-mnist"
        )
    return _read_split(
        folder / FASHION_MNIST_FILES["test_images"], folder / FASHION_MNIST_FILES["test_labels"]
    )


def load_image_folder(root: Path, *, invert: InvertMode = "auto") -> Dataset:
    """A dataset from root/<class_name>/*.png|jpg, preprocessed exactly as the service does uploads."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(class_dirs) < 2:
        raise DatasetNotFound(
            f"{root}: expected one sub-folder per class (at least two), found {len(class_dirs)}"
        )
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:  # a FIFO or a device named *.png is refused at once, not waited on
                images.append(decode_image(read_small_file(path, MAX_IMAGE_FILE_BYTES), invert=invert))
            except (InvalidInput, OSError) as exc:
                raise DatasetError(f"{path}: {exc}") from exc
            labels.append(label)
    if not images:
        raise DatasetNotFound(f"{root}: no images found")
    split = Split(np.stack(images), np.asarray(labels, dtype=np.int64))
    return Dataset(split, None, [p.name for p in class_dirs], source=str(root))


def _require_files(folder: Path) -> None:
    missing = [name for name in FASHION_MNIST_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFound(f"{folder}: missing {', '.join(missing)}")


def _load_idx_folder(folder: Path) -> Dataset:
    paths = {key: folder / name for key, name in FASHION_MNIST_FILES.items()}
    train = _read_split(paths["train_images"], paths["train_labels"])
    test = _read_split(paths["test_images"], paths["test_labels"])
    checksums = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths.values()}
    return Dataset(train, test, list(FASHION_MNIST_CLASSES), source=str(folder), checksums=checksums)


def _read_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != INPUT_SHAPE:
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected {INPUT_SHAPE}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{labels_path}: label {labels.max()} outside 0-{len(FASHION_MNIST_CLASSES) - 1}")
    return Split(images, labels.astype(np.int64))


def _load_from_keras() -> Dataset:  # pragma: no cover - needs the internet
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    return Dataset(
        Split(x_train, y_train.astype(np.int64)),
        Split(x_test, y_test.astype(np.int64)),
        list(FASHION_MNIST_CLASSES),
        source="keras.datasets.fashion_mnist",
    )
