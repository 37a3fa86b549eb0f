"""Inference engines over a published version: ONNX Runtime (fast, no TensorFlow) or Keras (versions
without an ONNX artifact).

Both take a (N, 28, 28) float32 batch of raw pixels and return (N, classes) float32 probabilities
and, for models published with them (a second output), the (N, F) penultimate-layer features that
out-of-distribution scores are computed from. A version's probe.npz holds probe inputs and the Keras
outputs on them, recorded at publish; every engine is checked against it before it serves, so a
serving artifact that disagrees is refused.
"""

from __future__ import annotations

import os
import threading
import zipfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from core.safefiles import without_paths
from core.store import MODEL_FILE, ONNX_FILE, PROBE_FILE

PARITY_TOLERANCE = 1e-5
EngineKind = Literal["auto", "onnx", "keras"]


class EngineError(Exception):
    """A version's model cannot be loaded or does not give the outputs it was published with."""


def quiet_tensorflow(environment: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """TensorFlow's C++ logging down to errors (unless set already), here or in a child's environment."""
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


class Outputs(NamedTuple):
    probabilities: np.ndarray  # (N, classes) float32
    features: np.ndarray | None  # (N, F) float32; None for models published with one output


class Engine(Protocol):
    kind: str

    def predict(self, batch: np.ndarray) -> Outputs: ...


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
            raise EngineError(
                f"{path.name}: cannot be loaded by ONNX Runtime ({without_paths(str(exc))})"
            ) from exc
        self._input = self._session.get_inputs()[0].name
        # Probabilities first, then (when the model has them) the features.
        self._outputs = [output.name for output in self._session.get_outputs()[:2]]

    def predict(self, batch: np.ndarray) -> Outputs:
        results = self._session.run(self._outputs, {self._input: batch})
        return Outputs(results[0], results[1] if len(results) > 1 else None)


class KerasEngine:
    kind = "keras"

    def __init__(self, path: Path) -> None:
        quiet_tensorflow(os.environ)
        try:
            import keras
        except ImportError as exc:  # the serving image has no TensorFlow
            raise EngineError(
                f"{path.parent.name} has no {ONNX_FILE} and Keras is not installed to serve {path.name}"
            ) from exc
        try:
            # safe_mode stays on: a model file never runs arbitrary code (no Lambda deserialisation).
            self._model = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types for a bad file
            raise EngineError(f"{path.name}: cannot be loaded by Keras ({without_paths(str(exc))})") from exc

    def predict(self, batch: np.ndarray) -> Outputs:
        # A direct call avoids model.predict()'s per-call set-up, which dwarfs this model's compute.
        output: Any = self._model(batch, training=False)
        if isinstance(output, (list, tuple)):
            return Outputs(np.asarray(output[0], np.float32), np.asarray(output[1], np.float32))
        return Outputs(np.asarray(output, dtype=np.float32), None)


def load_engine(version_dir: Path, kind: EngineKind = "auto", probe: Probe | None = None) -> Engine:
    """Load and verify the engine for a version: ONNX when it has the artifact (or when asked), else Keras.

    A version whose ONNX artifact exists but fails to load or verify is refused: Keras never serves
    in its place (it would cost TensorFlow's memory and latency without anyone noticing).
    """
    probe = probe or load_probe(version_dir)
    onnx_path = version_dir / ONNX_FILE
    use_onnx = kind == "onnx" or (kind == "auto" and os.path.lexists(onnx_path))
    path = onnx_path if use_onnx else version_dir / MODEL_FILE
    require_regular_file(path)
    engine: Engine = OnnxEngine(path) if use_onnx else KerasEngine(path)
    verify_engine(engine, probe)
    return engine


class Probe(NamedTuple):
    """Inputs and what the published model gave on them; features and OOD scores when it has them."""

    inputs: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray | None = None
    ood_scores: np.ndarray | None = None

    def save(self, path: Path) -> None:
        arrays = {"inputs": self.inputs, "outputs": self.probabilities}
        if self.features is not None:
            arrays["features"] = self.features
        if self.ood_scores is not None:
            arrays["ood_scores"] = self.ood_scores
        np.savez(path, **arrays)  # type: ignore[arg-type]


def load_probe(version_dir: Path) -> Probe:
    path = version_dir / PROBE_FILE
    require_regular_file(path)
    try:
        data = read_npz(path)
        optional = {key: data[key].astype(np.float32) for key in ("features", "ood_scores") if key in data}
        probe = Probe(data["inputs"].astype(np.float32), data["outputs"].astype(np.float32), **optional)
    except (OSError, KeyError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        raise EngineError(f"{path.name}: unreadable probe ({exc})") from exc
    if not all(np.isfinite(array).all() for array in probe if array is not None):
        raise EngineError(f"{path.name}: the probe holds values that are not finite")
    return probe


# NumPy parses .npy headers with ast.literal_eval, and CPython 3.11 before 3.11.8 can fail
# ("AST constructor recursion depth mismatch", gh-106905) when two threads parse at once: two
# models loading together did. One lock for every .npz read in the process.
_NPZ_LOCK = threading.Lock()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles), read under the process-wide lock."""
    with _NPZ_LOCK, np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def require_regular_file(path: Path) -> None:
    """Only regular files are loaded: a FIFO or device in a version folder would block the loader."""
    if not path.is_file():
        raise EngineError(f"{path.name} is missing or not a regular file")


def verify_engine(engine: Engine, probe: Probe) -> Outputs:
    """Refuse an engine whose outputs differ from the recorded Keras outputs on the probe batch.

    Returns the engine's outputs on the probe, which the OOD detector is checked with.
    """
    try:
        actual = engine.predict(probe.inputs)
    except Exception as exc:  # any failure to run is a failed verification
        raise EngineError(f"{engine.kind} engine failed on the probe batch ({exc})") from exc
    _compare(engine.kind, "probabilities", actual.probabilities, probe.probabilities)
    if not np.array_equal(actual.probabilities.argmax(1), probe.probabilities.argmax(1)):
        raise EngineError(f"{engine.kind} engine predicts other classes than the published model")
    if (actual.features is None) != (probe.features is None):
        raise EngineError(f"{engine.kind} engine and the probe disagree on whether the model gives features")
    if actual.features is not None and probe.features is not None:
        _compare(engine.kind, "features", actual.features, probe.features)
    return actual


def _compare(kind: str, what: str, actual: np.ndarray, expected: np.ndarray) -> None:
    if actual.shape != expected.shape:
        raise EngineError(f"{kind} engine returned {what} of shape {actual.shape}, expected {expected.shape}")
    if not np.isfinite(actual).all():
        raise EngineError(f"{kind} engine returned non-finite {what} on the probe batch")
    # Features are unbounded activations: their tolerance scales with their size.
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(actual - expected).max())
    if difference > tolerance:
        raise EngineError(
            f"{kind} engine disagrees with the published Keras {what} "
            f"(max abs difference {difference:.2e}, tolerance {tolerance:.0e})"
        )
