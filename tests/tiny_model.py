"""A tiny real model published without TensorFlow, for the service's tests (the service needs none).

The MLP `Flatten -> Dense(32, relu) -> Dense(10, softmax)`, pixels 0-255 scaled inside the graph as the
published Keras models do, is trained with NumPy (full-batch Adam) on the learnable synthetic
Fashion-MNIST of tests/helpers.py, written as an ONNX graph with the two outputs the service reads
(probabilities, then the penultimate features), and published through the store with everything a
version carries: probe batch, OOD detector, metadata with its metrics, figures. Training tests use the
Keras-trained store (`keras_store` in conftest.py) instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core.datasets import Dataset, Split
from core.engines import OnnxEngine, Probe, verify_engine
from core.evaluation import evaluate_probabilities
from core.metadata import ModelMetadata, OodReport
from core.ood import FLAG_QUANTILE, METHOD, OodDetector
from core.preprocessing import INPUT_SHAPE, PIXELS_PER_IMAGE
from core.store import CURVES_FILE, ONNX_FILE, OOD_FILE, PROBE_FILE, RELIABILITY_FILE, ModelStore
from tests.helpers import image_bytes

HIDDEN = 32
VALIDATION = 100


def publish_tiny_model(store: ModelStore, dataset: Dataset, steps: int = 300, seed: int = 0) -> int:
    """Train, export and publish one version (promoted); returns its number."""
    images, labels = dataset.train.images, dataset.train.labels
    train, validation = (
        Split(images[VALIDATION:], labels[VALIDATION:]),
        Split(images[:VALIDATION], labels[:VALIDATION]),
    )
    weights = _train(train, len(dataset.class_names), steps, seed)
    graph = _onnx_graph(*weights)
    with store.staging() as staging:
        (staging / ONNX_FILE).write_bytes(graph)
        engine = OnnxEngine(staging / ONNX_FILE)
        train_features = engine.predict(train.images.astype(np.float32)).features
        validation_outputs = engine.predict(validation.images.astype(np.float32))
        assert train_features is not None and validation_outputs.features is not None
        detector = OodDetector.fit(
            train_features, train.images, train.labels, validation_outputs.features, validation.images
        )
        probe_inputs = np.concatenate(
            [validation.images[:32], np.zeros((1, *INPUT_SHAPE)), np.full((1, *INPUT_SHAPE), 255.0)]
        ).astype(np.float32)
        outputs = engine.predict(probe_inputs)
        assert outputs.features is not None
        probe = Probe(
            probe_inputs,
            outputs.probabilities,
            outputs.features,
            detector.score(outputs.features, probe_inputs),
        )
        verify_engine(engine, probe)
        probe.save(staging / PROBE_FILE)
        detector.save(staging / OOD_FILE)
        for figure in (CURVES_FILE, RELIABILITY_FILE):
            (staging / figure).write_bytes(image_bytes(np.full((8, 8), 128, np.uint8)))
        metrics, _ = evaluate_probabilities(
            validation_outputs.probabilities, validation.labels, dataset.class_names
        )
        flagged = detector.flag(detector.score(validation_outputs.features, validation.images))
        metadata = ModelMetadata(
            name=store.name,
            created_at=datetime.now(UTC),
            class_names=dataset.class_names,
            validation=metrics,
            datasets=dataset.checksums,
            framework={"numpy": np.__version__, "onnx": onnx.__version__},
            ood=OodReport(
                method=METHOD,
                threshold=detector.threshold,
                flag_quantile=FLAG_QUANTILE,
                flagged={"validation": float(flagged.mean())},
            ),
            artifacts=[ONNX_FILE, PROBE_FILE, OOD_FILE],
        )
        version = store.publish(staging, metadata)
    store.promote(version, reason="tests")
    return version


def _train(split: Split, classes: int, steps: int, seed: int) -> list[np.ndarray]:
    """Weights (W1, b1, W2, b2) of the MLP after `steps` of full-batch Adam on cross-entropy."""
    rng = np.random.default_rng(seed)
    x = split.images.reshape(len(split.images), PIXELS_PER_IMAGE).astype(np.float32) / 255.0
    y = np.eye(classes, dtype=np.float32)[split.labels]
    params = [
        rng.normal(0, np.sqrt(2 / PIXELS_PER_IMAGE), (PIXELS_PER_IMAGE, HIDDEN)).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        rng.normal(0, np.sqrt(1 / HIDDEN), (HIDDEN, classes)).astype(np.float32),
        np.zeros(classes, np.float32),
    ]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        hidden = np.maximum(x @ w1 + b1, 0)
        logits = hidden @ w2 + b2
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        d_logits = (probabilities - y) / len(x)
        d_hidden = (d_logits @ w2.T) * (hidden > 0)
        grads = [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
        for i, grad in enumerate(grads):
            moments[i] = 0.9 * moments[i] + 0.1 * grad
            squares[i] = 0.999 * squares[i] + 0.001 * grad**2
            corrected = moments[i] / (1 - 0.9**step), squares[i] / (1 - 0.999**step)
            params[i] = params[i] - 1e-2 * corrected[0] / (np.sqrt(corrected[1]) + 1e-8)
    return params


def _onnx_graph(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> bytes:
    constants = {
        "flat_shape": np.array([-1, PIXELS_PER_IMAGE], np.int64),
        "scale": np.array(1 / 255, np.float32),
        "w1": w1.astype(np.float32),
        "b1": b1.astype(np.float32),
        "w2": w2.astype(np.float32),
        "b2": b2.astype(np.float32),
    }
    nodes = [
        helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["hidden_in"]),
        helper.make_node("Add", ["hidden_in", "b1"], ["hidden_pre"]),
        helper.make_node("Relu", ["hidden_pre"], ["features"]),
        helper.make_node("MatMul", ["features", "w2"], ["logits_in"]),
        helper.make_node("Add", ["logits_in", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, *INPUT_SHAPE])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, w2.shape[1]]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, HIDDEN]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_tiny_store(root: Path, dataset: Dataset) -> Path:
    publish_tiny_model(ModelStore(root, "fashion-mnist"), dataset)
    return root
