from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.datasets import Dataset, find_fashion_mnist, load_fashion_mnist
from core.engines import quiet_tensorflow
from core.store import ModelStore
from tests.helpers import BUNDLED_STORE, make_client, write_fashion_mnist
from tests.tiny_model import write_tiny_store

quiet_tensorflow(os.environ)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI, which installs everything (scripts/system-packages), a test that skips has failed."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where nothing may skip: {reason}"


def _skip_reason(report: pytest.TestReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Says plainly what did not run on this machine, and the one command that makes it run."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    terminalreporter.section("not run on this machine", sep="-", yellow=True, bold=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:4d} {'test' if count == 1 else 'tests'}: {reason}")
    total = f"{len(skipped)} {'test' if len(skipped) == 1 else 'tests'}"
    terminalreporter.write_line(
        f"{total} did not run. `sudo make system-packages` installs the Debian packages they need "
        "(`make test` does it itself when run as root)."
    )
    if any("kubectl" in reason for reason in reasons):
        terminalreporter.write_line(
            "kubectl (with kustomize) is not among them: Debian's kubernetes-client conflicts with the "
            "kubectl these machines carry; install kubectl from Kubernetes' own packages."
        )


@pytest.fixture(scope="session")
def real_dataset() -> Dataset:
    """The real Fashion-MNIST (the Debian package); without it the test skips, which fails under CI."""
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return load_fashion_mnist(allow_download=False)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A store with one real (tiny) version trained and published without TensorFlow, as the service
    needs none (tests/tiny_model.py): what the service's tests serve."""
    return write_tiny_store(tmp_path_factory.mktemp("store"), load_fashion_mnist(synthetic_data_dir))


@pytest.fixture(scope="session")
def keras_store(tmp_path_factory: pytest.TempPathFactory, synthetic_data_dir: Path) -> Path:
    """A store with one real (tiny) Keras version, published by the training code itself (the engines'
    and the training tests)."""
    from training.config import TrainConfig
    from training.train import train_and_publish

    root = tmp_path_factory.mktemp("keras-store")
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
