from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.datasets import Dataset, find_fashion_mnist, load_fashion_mnist
from core.engines import quiet_tensorflow
from core.store import ModelStore
from tests.helpers import BUNDLED_STORE, make_client, write_fashion_mnist

quiet_tensorflow(os.environ)


@pytest.fixture(scope="session")
def real_dataset() -> Dataset:
    """The real Fashion-MNIST; under REQUIRE_DATASET=1 (CI) its absence fails instead of skipping."""
    if find_fashion_mnist() is None:
        if os.environ.get("REQUIRE_DATASET") == "1":
            pytest.fail(
                "REQUIRE_DATASET=1 but Fashion-MNIST is missing: apt-get install dataset-fashion-mnist"
            )
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return load_fashion_mnist(allow_download=False)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A store with one real (tiny) trained version, published by the training code itself."""
    from training.config import TrainConfig
    from training.train import train_and_publish

    root = tmp_path_factory.mktemp("store")
    config = TrainConfig(
        hidden_units=(32,),
        epochs=15,
        batch_size=32,
        learning_rate=3e-3,
        validation_size=100,
        augment_flip=False,
    )
    dataset = load_fashion_mnist(synthetic_data_dir)
    train_and_publish(dataset, ModelStore(root, "fashion-mnist"), config, tmp_path_factory.mktemp("run"))
    return root


@pytest.fixture
def store_copy(tiny_store: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny store that a test may change."""
    return Path(shutil.copytree(tiny_store, tmp_path / "store"))


@pytest.fixture
def client(tiny_store: Path) -> Iterator[TestClient]:
    yield from make_client(tiny_store)


@pytest.fixture(scope="module")
def bundled_client() -> Iterator[TestClient]:
    yield from make_client(BUNDLED_STORE)


@pytest.fixture
def blank() -> np.ndarray:
    return np.zeros((28, 28), dtype=np.uint8)
