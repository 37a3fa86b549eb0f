"""Out-of-distribution detection: how unlike the training data an input is, and whether to flag it.

The score is a Mahalanobis distance (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples") on a vector that joins two views of an input:

- the model's penultimate-layer features (what the network made of it), which separate shapes the
  network has not seen, such as digits and letters;
- twelve statistics of the 28x28 input itself (ink, contrast, extent, fill, gaps, symmetry,
  ink changes per line, ...), which separate inputs that are not a single solid item: blank frames, noise,
  textures, text.

A mean and a covariance per class are fitted on the training split; the score is the squared
Mahalanobis distance to the nearest class. The threshold is the score that FLAG_QUANTILE of the validation
split stays under. Everything is NumPy (no TensorFlow): a version stores the fitted numbers in
ood.npz, and its probe records the scores of its probe batch, which every load checks.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from core.engines import EngineError, Probe, read_npz, require_regular_file
from core.preprocessing import IMAGE_SIZE, MAX_PIXEL
from core.store import OOD_FILE

METHOD = "mahalanobis-nearest-class(penultimate features + 12 input statistics; covariance per class)"
FLAG_QUANTILE = 0.95
# Added to the covariance's diagonal (in units of each dimension's spread): keeps the inverse stable.
SHRINKAGE = 1e-2
# Scores are squared distances in the hundreds: compared relative to their size.
SCORE_TOLERANCE = 1e-4
INK_LEVEL = 0.04  # a pixel above 4 % of full scale is part of the item
STATISTICS = 12  # input statistics in the measured vector, after the features


def load_detector(version_dir: Path, probe: Probe) -> OodDetector | None:
    """The version's detector, checked against the scores its probe recorded; None if it has none."""
    path = version_dir / OOD_FILE
    if not os.path.lexists(path):
        if probe.ood_scores is not None:
            raise OodError(f"the probe records OOD scores but {OOD_FILE} is missing")
        return None
    require_regular_file(path)
    if probe.features is None or probe.ood_scores is None:
        raise OodError(f"{OOD_FILE} is present but the probe records no features or OOD scores to check it")
    detector = OodDetector.load(path, probe.features.shape[1])
    scores = detector.score(probe.features, probe.inputs)
    if not (np.isfinite(scores).all() and np.isfinite(probe.ood_scores).all()):
        raise OodError(f"{OOD_FILE} or the probe gives non-finite OOD scores")
    difference = float(np.abs(scores - probe.ood_scores).max())
    tolerance = SCORE_TOLERANCE * max(1.0, float(np.abs(probe.ood_scores).max()))
    if difference > tolerance:
        raise OodError(
            f"{OOD_FILE} disagrees with the published OOD scores (max difference {difference:.2e}, "
            f"tolerance {tolerance:.0e})"
        )
    return detector


class OodError(EngineError):
    """A version's OOD detector cannot be read, does not fit the model or disagrees with its probe."""


@dataclass(frozen=True)
class OodDetector:  # frozen, yet cached_property works: it writes the instance __dict__
    means: np.ndarray  # (classes, dims)
    precisions: np.ndarray  # (classes, dims, dims): each class's inverse covariance
    threshold: float

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        validation_features: np.ndarray,
        validation_images: np.ndarray,
    ) -> OodDetector:
        """Fit on the training split; the threshold leaves FLAG_QUANTILE of the validation split unflagged."""
        vectors = describe(features, images)
        # Measured in units of each dimension's spread, so the shrinkage weighs every dimension alike;
        # a dimension with no spread (a unit that never fires) keeps its own units.
        spread = vectors.std(axis=0)
        spread[spread < 1e-9] = 1.0
        scaled = vectors / spread
        means, precisions = [], []
        for label in np.unique(labels):
            members = scaled[labels == label]
            centred = members - members.mean(axis=0)
            covariance = centred.T @ centred / len(members) + SHRINKAGE * np.eye(scaled.shape[1])
            means.append(members.mean(axis=0) * spread)
            # Stored in the input's own units: (v - m s)^T diag(1/s) P diag(1/s) (v - m s).
            precisions.append(np.linalg.inv(covariance) / np.outer(spread, spread))
        unthresholded = cls(np.stack(means), np.stack(precisions), threshold=np.inf)
        validation = unthresholded.score(validation_features, validation_images)
        return cls(
            unthresholded.means, unthresholded.precisions, float(np.quantile(validation, FLAG_QUANTILE))
        )

    def score(self, features: np.ndarray, images: np.ndarray) -> np.ndarray:
        """(N,) squared distance to the nearest class; higher is less like the training data.

        With P = L L^T (Cholesky), (v - m)^T P (v - m) = |v L - m L|^2: every class in one product.
        """
        vectors = describe(features, images)
        classes, dims = self.means.shape
        whitened = (vectors @ self._whitener - self._offsets).reshape(len(vectors), classes, dims)
        return np.einsum("ncd,ncd->nc", whitened, whitened).min(axis=1).astype(np.float64)

    @cached_property
    def _whitener(self) -> np.ndarray:
        """(dims, classes * dims): each class's Cholesky factor, side by side."""
        factors = [np.linalg.cholesky((p + p.T) / 2) for p in self.precisions]
        return np.ascontiguousarray(np.concatenate(factors, axis=1), dtype=np.float32)

    @cached_property
    def _offsets(self) -> np.ndarray:
        classes, dims = self.means.shape
        factors = self._whitener.reshape(dims, classes, dims)
        return np.einsum("cd,dce->ce", self.means, factors).reshape(classes * dims).astype(np.float32)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, means=self.means, precisions=self.precisions, threshold=np.float64(self.threshold))

    @classmethod
    def load(cls, path: Path, feature_count: int | None = None) -> OodDetector:
        try:
            data = read_npz(path)
            means, precisions = data["means"].astype(np.float64), data["precisions"].astype(np.float64)
            threshold = float(data["threshold"])
        except (OSError, KeyError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            raise OodError(f"{path.name}: unreadable ({exc})") from exc
        if not (np.isfinite(means).all() and np.isfinite(precisions).all()):
            # NaN compares False with every tolerance: it would pass the probe check and flag nothing.
            raise OodError(f"{path.name}: class means or precisions are not finite")
        classes, dims = means.shape if means.ndim == 2 else (-1, -1)
        if precisions.shape != (classes, dims, dims) or not np.isfinite(threshold):
            raise OodError(f"{path.name}: means {means.shape} and precisions {precisions.shape} do not fit")
        if feature_count is not None and dims != feature_count + STATISTICS:
            raise OodError(
                f"{path.name}: fitted on {dims - STATISTICS} features, the model gives {feature_count}"
            )
        return cls(means, precisions, threshold)


def describe(features: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The vector the detector measures: penultimate features, then input statistics."""
    vectors = np.empty((len(features), features.shape[1] + STATISTICS), dtype=np.float32)
    vectors[:, : features.shape[1]] = features
    vectors[:, features.shape[1] :] = input_statistics(images)
    return vectors


def input_statistics(images: np.ndarray) -> np.ndarray:
    """(N, 12) shape statistics of (N, 28, 28) model inputs (0-255, light item on black).

    Written for few NumPy calls: for one image the per-call overhead is the whole cost. Gradient
    and Laplacian energy were measured too; they cost a third of the time and added nothing.
    """
    flat = np.asarray(images, dtype=np.float32).reshape(-1, _AREA)
    count = len(flat)
    ink = flat > INK_LEVEL * MAX_PIXEL
    totals = flat @ _TOTAL_AND_FRAME  # (N, 2): all ink, ink on the frame's edge
    ink_2d = ink.reshape(count, IMAGE_SIZE, IMAGE_SIZE)
    per_row = ink_2d.sum(axis=2)
    lines = np.concatenate([per_row, ink_2d.sum(axis=1)], axis=1).reshape(count, 2, IMAGE_SIZE) > 0
    first = lines.argmax(axis=2)
    span = (IMAGE_SIZE - lines[:, :, ::-1].argmax(axis=2) - first) * lines.any(axis=2)  # height, width
    mean = totals[:, 0] / (_AREA * MAX_PIXEL)
    coverage = per_row.sum(axis=1) / _AREA
    square = np.einsum("ij,ij->i", flat, flat) / (_AREA * MAX_PIXEL**2)
    pixels = flat.reshape(count, IMAGE_SIZE, IMAGE_SIZE)
    statistics = np.empty((count, STATISTICS))
    statistics[:, 0] = mean  # ink
    statistics[:, 1] = np.sqrt(np.maximum(square - mean * mean, 0))  # contrast
    statistics[:, 2] = coverage
    statistics[:, 3] = (flat > MAX_PIXEL / 2).sum(axis=1) / _AREA  # bright coverage
    statistics[:, 4] = totals[:, 1] / (_FRAME_PIXELS * MAX_PIXEL)  # ink on the frame's edge
    statistics[:, 5] = span.max(axis=1) / IMAGE_SIZE  # extent, longest side
    statistics[:, 6] = span.min(axis=1) / IMAGE_SIZE  # extent, shortest side
    statistics[:, 7] = coverage / np.maximum(span[:, 0] * span[:, 1] / _AREA, 1 / _AREA)  # fill of its box
    # Rows and columns inside the item's extent that hold no ink: lines of text, bricks, stars.
    statistics[:, 8] = 1 - (lines.sum(axis=2) / np.maximum(span, 1)).sum(axis=1) / 2
    # Garments are close to mirror-symmetric; characters and scenes are not.
    statistics[:, 9] = (
        np.abs(pixels - pixels[:, :, ::-1]).sum(axis=(1, 2)) / (_AREA * MAX_PIXEL) / (mean + 0.02)
    )
    # Ink/background changes per row and per column: about two for a solid item, many for text.
    statistics[:, 10] = (ink_2d[:, :, 1:] != ink_2d[:, :, :-1]).sum(axis=(1, 2)) / IMAGE_SIZE
    statistics[:, 11] = (ink_2d[:, 1:] != ink_2d[:, :-1]).sum(axis=(1, 2)) / IMAGE_SIZE
    return statistics


_AREA = IMAGE_SIZE * IMAGE_SIZE
_ROW, _COLUMN = np.divmod(np.arange(_AREA), IMAGE_SIZE)
_EDGE = (_ROW == 0) | (_ROW == IMAGE_SIZE - 1) | (_COLUMN == 0) | (_COLUMN == IMAGE_SIZE - 1)
_FRAME_PIXELS = int(_EDGE.sum())
_TOTAL_AND_FRAME = np.stack([np.ones(_AREA), _EDGE]).T.astype(np.float32)
