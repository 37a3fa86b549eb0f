"""Inference engines over a published version: ONNX Runtime (fast, no TensorFlow) or Keras (versions
without an ONNX artifact).

Both take a (N, 28, 28) float32 batch of raw pixels and return (N, classes) float32 probabilities.
A version's probe.npz holds probe inputs and the Keras outputs on them, recorded at publish; every
engine is checked against it before it serves, so a serving artifact that disagrees is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from core.store import MODEL_FILE, ONNX_FILE, PROBE_FILE

PARITY_TOLERANCE = 1e-5
EngineKind = Literal["auto", "onnx", "keras"]


class EngineError(Exception):
    """A version's model cannot be loaded or does not give the outputs it was published with."""


class Engine(Protocol):
    kind: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxEngine:
    kind = "onnx"

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread without spinning: the event loop shares these cores, and a spinning
        # pool costs more CPU per request than it saves on batches this small.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise EngineError(f"{path.name}: cannot be loaded by ONNX Runtime ({exc})") from exc
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._session.run([self._output], {self._input: batch})[0]
        return result


class KerasEngine:
    kind = "keras"

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        try:
            # safe_mode stays on: a model file never runs arbitrary code (no Lambda deserialisation).
            self._model = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad file
            raise EngineError(f"{path.name}: cannot be loaded by Keras ({exc})") from exc

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # A direct call avoids model.predict()'s per-call set-up, which dwarfs this model's compute.
        output: Any = self._model(batch, training=False)
        return np.asarray(output, dtype=np.float32)


def load_engine(version_dir: Path, kind: EngineKind = "auto") -> Engine:
    """Load and verify the engine for a version: ONNX when it has the artifact (or when asked), else Keras.

    A version whose ONNX artifact exists but fails to load or verify is refused: Keras never serves
    in its place (it would cost TensorFlow's memory and latency without anyone noticing).
    """
    probe = load_probe(version_dir)
    onnx_path = version_dir / ONNX_FILE
    use_onnx = kind == "onnx" or (kind == "auto" and os.path.lexists(onnx_path))
    path = onnx_path if use_onnx else version_dir / MODEL_FILE
    _require_regular_file(path)
    engine: Engine = OnnxEngine(path) if use_onnx else KerasEngine(path)
    verify_engine(engine, *probe)
    return engine


def load_probe(version_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    path = version_dir / PROBE_FILE
    _require_regular_file(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["inputs"].astype(np.float32), data["outputs"].astype(np.float32)
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise EngineError(f"{path.name}: unreadable probe ({exc})") from exc


def _require_regular_file(path: Path) -> None:
    """Only regular files are loaded: a FIFO or device in a version folder would block the loader."""
    if not path.is_file():
        raise EngineError(f"{path.name} is missing or not a regular file")


def verify_engine(engine: Engine, inputs: np.ndarray, expected: np.ndarray) -> None:
    """Refuse an engine whose outputs differ from the recorded Keras outputs on the probe batch."""
    try:
        actual = engine.predict(inputs)
    except Exception as exc:  # any failure to run is a failed verification
        raise EngineError(f"{engine.kind} engine failed on the probe batch ({exc})") from exc
    if actual.shape != expected.shape:
        raise EngineError(f"{engine.kind} engine returned shape {actual.shape}, expected {expected.shape}")
    if not np.isfinite(actual).all():
        raise EngineError(f"{engine.kind} engine returned non-finite outputs on the probe batch")
    difference = float(np.abs(actual - expected).max())
    if difference > PARITY_TOLERANCE or not np.array_equal(actual.argmax(1), expected.argmax(1)):
        raise EngineError(
            f"{engine.kind} engine disagrees with the published Keras outputs "
            f"(max abs difference {difference:.2e}, tolerance {PARITY_TOLERANCE:.0e})"
        )
