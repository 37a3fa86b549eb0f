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
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from core.engines import EngineError, Probe, require_regular_file
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

        (v - m)^T P (v - m) = v^T P v - 2 (P m)^T v + m^T P m, for every class in three products.
        """
        vectors = describe(features, images)
        classes, dims = self.means.shape
        quadratic = np.einsum("ncd,nd->nc", (vectors @ self._stacked).reshape(-1, classes, dims), vectors)
        distances = quadratic - 2 * vectors @ self._pulled.T + self._offsets
        return np.maximum(distances.min(axis=1), 0.0)

    @cached_property
    def _stacked(self) -> np.ndarray:
        """(dims, classes * dims): every class's precision side by side."""
        classes, dims = self.means.shape
        return np.ascontiguousarray(self.precisions.transpose(1, 0, 2).reshape(dims, classes * dims))

    @cached_property
    def _pulled(self) -> np.ndarray:
        return np.einsum("cde,ce->cd", self.precisions, self.means)

    @cached_property
    def _offsets(self) -> np.ndarray:
        return np.einsum("cd,cd->c", self._pulled, self.means)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return scores > self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, means=self.means, precisions=self.precisions, threshold=np.float64(self.threshold))

    @classmethod
    def load(cls, path: Path, feature_count: int | None = None) -> OodDetector:
        try:
            with np.load(path, allow_pickle=False) as data:
                means, precisions = data["means"].astype(np.float64), data["precisions"].astype(np.float64)
                threshold = float(data["threshold"])
        except (OSError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise OodError(f"{path.name}: unreadable ({exc})") from exc
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
    return np.concatenate([np.asarray(features, dtype=np.float64), input_statistics(images)], axis=1)


def input_statistics(images: np.ndarray) -> np.ndarray:
    """(N, 12) shape statistics of (N, 28, 28) model inputs (0-255, light item on black).

    Written for few NumPy calls: for one image the per-call overhead is the whole cost. (Gradient
    and Laplacian energy were measured too; they cost a third of the time and added nothing.)
    """
    x = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE) * np.float32(1 / MAX_PIXEL)
    count, side = len(x), IMAGE_SIZE
    area = side * side
    flat = x.reshape(count, area)
    ink = x > INK_LEVEL
    # Ink per row and per column, side by side: (N, 2, 28).
    per_line = np.concatenate([ink.sum(axis=2), ink.sum(axis=1)], axis=1).reshape(count, 2, side)
    lines = per_line > 0
    first = np.where(lines, _LINE_INDEX, side).min(axis=2)
    last = np.where(lines, _LINE_INDEX, -1).max(axis=2)
    span = np.maximum(last - first + 1, 0)  # (N, 2): the item's height and width in lines
    extent = np.sort(span, axis=1) / side  # (N, 2): shortest and longest side
    mean = flat.mean(axis=1)
    coverage = per_line[:, 0].sum(axis=1) / area
    frame = flat.sum(axis=1) - x[:, 1:-1, 1:-1].sum(axis=(1, 2))
    return np.stack(
        [
            mean,  # ink
            np.sqrt(np.maximum(np.einsum("ij,ij->i", flat, flat) / area - mean * mean, 0)),  # contrast
            coverage,
            np.count_nonzero(flat > 0.5, axis=1) / area,  # bright coverage
            frame / (area - (side - 2) ** 2),  # ink on the frame's edge
            extent[:, 1],
            extent[:, 0],
            coverage / np.maximum(extent[:, 0] * extent[:, 1], 1 / area),  # fill of the item's box
            # Rows and columns inside the item's extent that hold no ink: lines of text, bricks, stars.
            1 - (lines.sum(axis=2) / np.maximum(span, 1)).mean(axis=1),
            # Garments are close to mirror-symmetric; characters and scenes are not.
            np.abs(x - x[:, :, ::-1]).sum(axis=(1, 2)) / area / (mean + 0.02),
            # Ink/background changes per row and per column: about two for a solid item, many for text.
            np.diff(ink, axis=2).sum(axis=(1, 2)) / side,
            np.diff(ink, axis=1).sum(axis=(1, 2)) / side,
        ],
        axis=1,
    ).astype(np.float64)


_LINE_INDEX = np.arange(IMAGE_SIZE)
