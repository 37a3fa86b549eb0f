"""The inference contract: a loaded, verified version (LoadedModel), what it answers (Inference), and
how one version of the store is loaded and checked (load_version, a pure function of the store).

Verification: the metadata's input shape and classes, each engine against the probe batch recorded
at publish (which is also the warm-up), and the OOD detector against its recorded scores. What a
version that cannot serve raises is LOAD_ERRORS; refusal_reason() words it for clients and logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.engines import Engine, EngineError, EngineKind, load_engine, load_probe
from core.metadata import ModelMetadata
from core.ood import OodDetector, load_detector
from core.preprocessing import INPUT_SHAPE
from core.safefiles import without_paths
from core.store import ModelStore, StoreError


class IncompatibleModel(Exception):
    """A version whose inputs or classes differ from what this service serves."""


LOAD_ERRORS = (StoreError, EngineError, IncompatibleModel)  # what a version that cannot serve raises


def refusal_reason(exc: Exception) -> str:
    """Why a load failed, without server paths: the typed errors' own words; anything else is a defect,
    named by its type."""
    reason = str(exc) if isinstance(exc, LOAD_ERRORS) else f"unexpected {type(exc).__name__} ({exc})"
    return without_paths(reason)


@dataclass(frozen=True)
class Inference:
    probabilities: np.ndarray  # (N, classes)
    ood_scores: np.ndarray | None = None  # (N,); None for versions without an OOD detector
    ood_flags: np.ndarray | None = None  # (N,) bool: score above the version's threshold

    def __getitem__(self, rows: slice) -> Inference:
        return Inference(
            self.probabilities[rows],
            None if self.ood_scores is None else self.ood_scores[rows],
            None if self.ood_flags is None else self.ood_flags[rows],
        )

    def rank(self, k: int | None = None) -> np.ndarray:
        """Class ids best first, per image ((N, k), all classes when k is None); ties keep class order."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")
        return order if k is None else order[:, :k]

    @staticmethod
    def concatenate(parts: list[Inference]) -> Inference:
        """The inverse of slicing: parts of one version's answers, in order."""
        scored = all(p.ood_scores is not None and p.ood_flags is not None for p in parts)
        return Inference(
            np.concatenate([p.probabilities for p in parts]),
            np.concatenate([p.ood_scores for p in parts if p.ood_scores is not None]) if scored else None,
            np.concatenate([p.ood_flags for p in parts if p.ood_flags is not None]) if scored else None,
        )


@dataclass(frozen=True)
class LoadedModel:
    name: str  # the model's name in the store (and in every API)
    version: int
    metadata: ModelMetadata
    engine: Engine
    detector: OodDetector | None = None

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names

    def infer(self, batch: np.ndarray) -> Inference:
        """Probabilities and OOD scores for a (N, 28, 28) float32 batch: one engine call."""
        outputs = self.engine.predict(batch)
        if self.detector is None or outputs.features is None:
            return Inference(outputs.probabilities)
        scores = self.detector.score(outputs.features, batch)
        return Inference(outputs.probabilities, scores, self.detector.flag(scores))


def load_version(
    store: ModelStore, version: int, engine_kind: EngineKind, served: LoadedModel | None
) -> LoadedModel:
    """Load and verify one version; raises StoreError, EngineError or IncompatibleModel."""
    metadata = store.read_metadata(version)
    if tuple(metadata.input.shape) != INPUT_SHAPE:
        raise IncompatibleModel(
            f"version {version} takes inputs of shape {metadata.input.shape}, not {INPUT_SHAPE}"
        )
    if served is not None and metadata.class_names != served.class_names:
        raise IncompatibleModel(
            f"version {version} has classes {metadata.class_names}, the served version {served.version} "
            f"has {served.class_names}; restart the service to change the class list"
        )
    directory = store.version_dir(version)
    probe = load_probe(directory)
    engine = load_engine(directory, engine_kind, probe)
    return LoadedModel(store.name, version, metadata, engine, load_detector(directory, probe))
