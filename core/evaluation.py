"""Classification metrics from predicted probabilities, shared by training reports and /evaluate."""

from __future__ import annotations

import numpy as np

from core.metadata import ClassMetrics, EvaluationMetrics, ReliabilityBin

# Keras clips probabilities to [epsilon, 1 - epsilon] in its cross-entropy; matching it keeps
# /evaluate's loss equal to model.evaluate's.
EPSILON = 1e-7
CALIBRATION_BINS = 15


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def evaluate_probabilities(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[EvaluationMetrics, np.ndarray]:
    """Loss (sparse categorical cross-entropy), accuracy, per-class P/R/F1, and the confusion matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    true_positives = np.diag(matrix).astype(np.float64)
    predicted_counts = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(
        true_positives, predicted_counts, out=np.zeros_like(true_positives), where=predicted_counts > 0
    )
    recall = np.divide(true_positives, support, out=np.zeros_like(true_positives), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    per_class = {
        name: ClassMetrics(
            precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]), support=int(support[i])
        )
        for i, name in enumerate(class_names)
    }
    metrics = EvaluationMetrics(
        count=len(labels),
        loss=float(-np.log(picked).mean()),
        accuracy=float((predicted == labels).mean()),
        per_class=per_class,
        ece=expected_calibration_error(probabilities, labels),
    )
    return metrics, matrix


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[ReliabilityBin]:
    """Predictions grouped by confidence into equal-width bins: how often each group was right."""
    confidence = np.asarray(probabilities, dtype=np.float64).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    result = []
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        result.append(
            ReliabilityBin(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=count,
                confidence=float(confidence[members].mean()) if count else None,
                accuracy=float(correct[members].mean()) if count else None,
            )
        )
    return result


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> float:
    """ECE (Guo et al. 2017): the count-weighted mean gap between confidence and accuracy over bins."""
    total = len(labels)
    return (
        float(
            sum(
                b.count / total * abs(b.confidence - b.accuracy)
                for b in reliability_bins(probabilities, labels, bins)
                if b.confidence is not None and b.accuracy is not None
            )
        )
        if total
        else 0.0
    )
