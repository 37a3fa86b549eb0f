from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.datasets import (
    ENV_VAR,
    FASHION_MNIST_FILES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DatasetError,
    DatasetNotFound,
    find_fashion_mnist,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
)
from core.preprocessing import decode_image
from tests.helpers import idx_bytes, image_bytes, write_fashion_mnist, write_idx


def test_reads_gzipped_and_plain_idx_files(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for name in ("images.gz", "images.idx"):
        read = read_idx(write_idx(tmp_path / name, images, IDX_IMAGES_MAGIC), IDX_IMAGES_MAGIC)
        assert np.array_equal(read, images)


def test_wrong_magic_number_names_the_file_and_both_numbers(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels.gz", np.zeros(3, np.uint8), IDX_LABELS_MAGIC)
    with pytest.raises(DatasetError, match=r"labels.gz: magic number 2049, expected 2051"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_truncated_data_reports_expected_and_found_sizes(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8), IDX_IMAGES_MAGIC)[:-100]
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(
        DatasetError, match=r"short.gz: size mismatch, header says \[3, 28, 28\] \(2352 bytes"
    ):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_truncated_gzip_stream_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8), IDX_IMAGES_MAGIC))[:40])
    with pytest.raises(DatasetError, match=r"cut\.gz: cannot be read or decompressed"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_label_count_must_match_image_count(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path / "data", train_size=50, test_size=20)
    write_idx(folder / FASHION_MNIST_FILES["test_labels"], np.zeros(19, np.uint8), IDX_LABELS_MAGIC)
    with pytest.raises(DatasetError, match="19 labels for 20 images"):
        load_fashion_mnist(folder)


def test_loads_the_four_files_with_checksums(tmp_path: Path) -> None:
    dataset = load_fashion_mnist(write_fashion_mnist(tmp_path / "data", train_size=50, test_size=20))
    assert (len(dataset.train), len(dataset.test or [])) == (50, 20)
    assert dataset.train.images.shape == (50, 28, 28)
    assert dataset.class_names[9] == "Ankle boot"
    assert set(dataset.checksums) == set(FASHION_MNIST_FILES.values())


def test_lookup_prefers_data_dir_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write_fashion_mnist(tmp_path / "explicit", 10, 10)
    from_env = write_fashion_mnist(tmp_path / "env", 10, 10)
    monkeypatch.setenv(ENV_VAR, str(from_env))
    assert find_fashion_mnist(explicit) == explicit
    assert find_fashion_mnist() == from_env


def test_an_explicit_data_dir_without_the_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=r"missing train-images-idx3-ubyte\.gz"):
        find_fashion_mnist(tmp_path)


def test_no_copy_and_no_download_is_dataset_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    monkeypatch.setattr("core.datasets.SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFound, match="FASHION_MNIST_DIR"):
        load_fashion_mnist(allow_download=False)


def test_image_folder_uses_the_service_preprocessing(tmp_path: Path) -> None:
    shirt = np.zeros((56, 40), np.uint8)
    shirt[10:46, 8:32] = 200
    for name in ("bag", "shirt"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(image_bytes(shirt))
        (tmp_path / name / "b.jpg").write_bytes(image_bytes(255 - shirt, "JPEG"))  # dark on light: inverted
        (tmp_path / name / "notes.txt").write_text("ignored")
    dataset = load_image_folder(tmp_path)
    assert dataset.class_names == ["bag", "shirt"]
    assert dataset.train.images.shape == (4, 28, 28)
    assert list(dataset.train.labels) == [0, 0, 1, 1]
    photo = dataset.train.images[1]
    assert np.array_equal(photo, decode_image(image_bytes(255 - shirt, "JPEG")).astype(photo.dtype))
    assert photo[0, 0] == 0 and photo[14, 14] > 150  # trimmed to the shirt, inverted, background 0


def test_image_folder_reports_a_broken_file(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"x.png: the data is not a recognised image"):
        load_image_folder(tmp_path)


def test_image_folder_refuses_a_fifo_at_once_instead_of_waiting_on_it(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ok.png").write_bytes(image_bytes(np.full((28, 28), 200, np.uint8)))
    os.mkfifo(tmp_path / "a" / "pipe.png")  # a plain read waits for a writer forever
    outcome: list[BaseException] = []
    reader = threading.Thread(
        target=lambda: _catch(outcome, lambda: load_image_folder(tmp_path)), daemon=True
    )
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "load_image_folder waited on the FIFO"
    assert isinstance(outcome[0], DatasetError) and "pipe.png: is not a regular file" in str(outcome[0])


def _catch(outcome: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the test thread
        outcome.append(exc)
