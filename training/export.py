"""Serving artifacts written at publish: the probe batch and an ONNX model verified against Keras."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras
import numpy as np

from core.engines import EngineError, OnnxEngine, verify_engine
from core.preprocessing import INPUT_SHAPE, MAX_PIXEL
from core.store import MODEL_FILE, ONNX_FILE, PROBE_FILE

logger = logging.getLogger(__name__)


def probe_batch(examples: np.ndarray, seed: int = 0) -> np.ndarray:
    """Real examples plus the extremes (all black, all white, noise) that a parity check should cover."""
    noise = np.random.default_rng(seed).uniform(0, MAX_PIXEL, (4, *INPUT_SHAPE))
    extremes = np.stack([np.zeros(INPUT_SHAPE), np.full(INPUT_SHAPE, MAX_PIXEL)])
    return np.concatenate([examples, extremes, noise]).astype(np.float32)


def write_serving_artifacts(model: keras.Model, directory: Path, examples: np.ndarray) -> list[str]:
    """Write probe.npz and, when it matches Keras on the probe, model.onnx; return the artifacts written."""
    inputs = probe_batch(examples)
    outputs = np.asarray(model(inputs, training=False), dtype=np.float32)
    np.savez(directory / PROBE_FILE, inputs=inputs, outputs=outputs)
    onnx_path = directory / ONNX_FILE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's own NumPy deprecation noise
            model.export(str(onnx_path), format="onnx", verbose=False)
        verify_engine(OnnxEngine(onnx_path), inputs, outputs)
    except (EngineError, ValueError, RuntimeError, ImportError) as exc:
        logger.warning("no ONNX artifact for this version, it will be served by Keras: %s", exc)
        onnx_path.unlink(missing_ok=True)
        return [MODEL_FILE, PROBE_FILE]
    return [MODEL_FILE, ONNX_FILE, PROBE_FILE]
