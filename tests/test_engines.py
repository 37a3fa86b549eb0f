from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.engines import EngineError, KerasEngine, OnnxEngine, load_engine, load_probe
from core.store import ONNX_FILE, PROBE_FILE


def version_dir(store: Path) -> Path:
    return store / "fashion-mnist" / "1"


@pytest.fixture
def keras_copy(keras_store: Path, tmp_path: Path) -> Path:
    """A private copy of the Keras-trained store (it has model.keras beside model.onnx)."""
    return Path(shutil.copytree(keras_store, tmp_path / "store"))


def test_onnx_and_keras_engines_agree(keras_store: Path) -> None:
    directory = version_dir(keras_store)
    batch = np.random.default_rng(0).uniform(0, 255, (64, 28, 28)).astype(np.float32)
    onnx, keras = OnnxEngine(directory / ONNX_FILE), KerasEngine(directory / "model.keras")
    fast, reference = onnx.predict(batch), keras.predict(batch)
    assert fast.probabilities.shape == (64, 10)
    assert np.abs(fast.probabilities - reference.probabilities).max() <= 1e-5
    assert np.array_equal(fast.probabilities.argmax(1), reference.probabilities.argmax(1))
    # The penultimate features, a second output, agree too: the OOD detector reads them.
    assert fast.features is not None and reference.features is not None
    assert fast.features.shape == (64, 32)
    assert np.abs(fast.features - reference.features).max() <= 1e-4


def test_auto_prefers_the_onnx_artifact(keras_store: Path) -> None:
    assert load_engine(version_dir(keras_store)).kind == "onnx"


def test_a_version_without_the_artifact_falls_back_to_keras(keras_copy: Path) -> None:
    (version_dir(keras_copy) / ONNX_FILE).unlink()
    assert load_engine(version_dir(keras_copy)).kind == "keras"


def test_an_artifact_that_disagrees_with_keras_is_refused(keras_copy: Path) -> None:
    from training.export import serving_model
    from training.model import build_model

    impostor = serving_model(build_model(10, hidden_units=(32,)), 1.0)  # same shapes, untrained weights
    impostor(np.zeros((1, 28, 28), np.float32))
    impostor.export(str(version_dir(keras_copy) / ONNX_FILE), format="onnx", verbose=False)
    for kind in ("onnx", "auto"):  # auto never falls back to Keras for a version that has the artifact
        with pytest.raises(EngineError, match="onnx engine disagrees with the published Keras probabilities"):
            load_engine(version_dir(keras_copy), kind)  # type: ignore[arg-type]


def test_a_corrupt_artifact_is_refused_not_replaced_by_keras(keras_copy: Path) -> None:
    (version_dir(keras_copy) / ONNX_FILE).write_bytes(b"garbage")
    for kind in ("onnx", "auto"):
        with pytest.raises(EngineError, match="cannot be loaded by ONNX Runtime"):
            load_engine(version_dir(keras_copy), kind)  # type: ignore[arg-type]
    assert load_engine(version_dir(keras_copy), "keras").kind == "keras"  # asked for by name, it serves


def test_files_that_are_not_regular_are_refused_without_blocking(keras_store: Path, keras_copy: Path) -> None:
    for name in (ONNX_FILE, PROBE_FILE):
        path = version_dir(keras_copy) / name
        path.unlink()
        os.mkfifo(path)  # opening a FIFO would wait for a writer forever
        with pytest.raises(EngineError, match="not a regular file"):
            load_engine(version_dir(keras_copy))
        path.unlink()
        shutil.copy(version_dir(keras_store) / name, path)


def test_a_missing_probe_means_the_version_cannot_be_verified(keras_copy: Path) -> None:
    (version_dir(keras_copy) / PROBE_FILE).unlink()
    with pytest.raises(EngineError, match="missing or not a regular file"):
        load_engine(version_dir(keras_copy))


def test_the_probe_covers_real_and_extreme_inputs(keras_store: Path) -> None:
    probe = load_probe(version_dir(keras_store))
    count = len(probe.inputs)
    assert probe.inputs.shape[1:] == (28, 28) and probe.probabilities.shape == (count, 10)
    assert probe.inputs.min() == 0 and probe.inputs.max() == 255
    assert probe.features is not None and probe.features.shape == (count, 32)
    assert probe.ood_scores is not None and probe.ood_scores.shape == (count,)


def test_features_that_disagree_with_the_probe_are_refused(keras_copy: Path) -> None:
    directory = version_dir(keras_copy)
    probe = load_probe(directory)
    assert probe.features is not None
    probe._replace(features=probe.features + 0.01).save(directory / PROBE_FILE)
    with pytest.raises(EngineError, match="disagrees with the published Keras features"):
        load_engine(directory)


def test_a_corrupt_keras_file_is_an_engine_error(keras_copy: Path) -> None:
    directory = version_dir(keras_copy)
    (directory / ONNX_FILE).unlink()
    (directory / "model.keras").write_bytes(b"PK not really a zip")
    with pytest.raises(EngineError, match="cannot be loaded by Keras"):
        load_engine(directory)
    shutil.rmtree(directory)


def test_serving_with_the_onnx_engine_never_imports_tensorflow(keras_store: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    script = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "from fastapi.testclient import TestClient\n"
        "from tests.helpers import wait_until\n"
        f"with TestClient(create_app(Settings(model_store={str(keras_store)!r}))) as client:\n"
        "    wait_until(lambda: client.get('/health/ready').status_code == 200)\n"
        "    assert client.post('/predict', json={'instances': [[0] * 784]}).status_code == 200\n"
        "    assert client.get('/model').json()['engine'] == 'onnx'\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
