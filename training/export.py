"""The served model and its artifacts: calibrated, with features as a second output, ONNX-verified.

The model a version serves takes raw 0-255 pixels and gives two outputs: calibrated class
probabilities (the temperature folded into the last layer) and the penultimate-layer features the
OOD detector measures. probe.npz records both, and the detector's scores, on a probe batch; the
ONNX export is kept only when it matches Keras on that batch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras
import numpy as np

from core.engines import EngineError, OnnxEngine, Probe, verify_engine
from core.ood import OodDetector
from core.preprocessing import INPUT_SHAPE, MAX_PIXEL
from core.store import MODEL_FILE, ONNX_FILE, OOD_FILE, PROBE_FILE
from training.model import OUTPUT_LAYER

logger = logging.getLogger(__name__)
FEATURES_OUTPUT = "features"


def classifier(model: keras.Model) -> keras.Model:
    """The model's probabilities output alone (a served model also has features)."""
    try:
        output = model.get_layer(OUTPUT_LAYER).output
    except ValueError as exc:
        raise ValueError(
            f"the model has no {OUTPUT_LAYER!r} layer: it was not built by training/model.py"
        ) from exc
    return keras.Model(model.input, output, name=model.name)


def penultimate(model: keras.Model) -> keras.Model:
    """Pixels -> the features the output layer reads."""
    return keras.Model(model.input, model.get_layer(OUTPUT_LAYER).input, name="features")


def output_weights(model: keras.Model) -> tuple[np.ndarray, np.ndarray]:
    kernel, bias = model.get_layer(OUTPUT_LAYER).get_weights()
    return np.asarray(kernel, dtype=np.float64), np.asarray(bias, dtype=np.float64)


def serving_model(model: keras.Model, temperature: float) -> keras.Model:
    """A copy of the classifier with logits divided by `temperature` and the features as a second output.

    softmax((W f + b) / T) = softmax((W / T) f + b / T): the temperature becomes part of the weights.
    """
    trained = classifier(model)
    served = keras.models.clone_model(trained)
    served.set_weights(trained.get_weights())
    layer = served.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / temperature, bias / temperature])
    features = keras.layers.Identity(name=FEATURES_OUTPUT)(layer.input)
    return keras.Model(served.input, [layer.output, features], name=trained.name)


def probe_batch(examples: np.ndarray, seed: int = 0) -> np.ndarray:
    """Real examples plus the extremes (all black, all white, noise) that a parity check should cover."""
    noise = np.random.default_rng(seed).uniform(0, MAX_PIXEL, (4, *INPUT_SHAPE))
    extremes = np.stack([np.zeros(INPUT_SHAPE), np.full(INPUT_SHAPE, MAX_PIXEL)])
    return np.concatenate([examples, extremes, noise]).astype(np.float32)


def write_serving_artifacts(
    served: keras.Model, directory: Path, examples: np.ndarray, detector: OodDetector
) -> list[str]:
    """Write probe.npz, ood.npz and, when it matches Keras on the probe, model.onnx; return the names."""
    inputs = probe_batch(examples)
    probabilities, features = (np.asarray(o, dtype=np.float32) for o in served(inputs, training=False))
    probe = Probe(inputs, probabilities, features, detector.score(features, inputs).astype(np.float32))
    probe.save(directory / PROBE_FILE)
    detector.save(directory / OOD_FILE)
    written = [MODEL_FILE, PROBE_FILE, OOD_FILE]
    onnx_path = directory / ONNX_FILE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's own NumPy deprecation noise
            served.export(str(onnx_path), format="onnx", verbose=False)
        verify_engine(OnnxEngine(onnx_path), probe)
    except (EngineError, ValueError, RuntimeError, ImportError) as exc:
        logger.warning("no ONNX artifact for this version, it will be served by Keras: %s", exc)
        onnx_path.unlink(missing_ok=True)
        return written
    return [*written, ONNX_FILE]
