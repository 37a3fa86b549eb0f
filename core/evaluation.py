"""Classification metrics from predicted probabilities, shared by training reports and /evaluate."""

from __future__ import annotations

import numpy as np

from core.store import ClassMetrics, EvaluationMetrics

# Keras clips probabilities to [epsilon, 1 - epsilon] in its cross-entropy; matching it keeps
# /evaluate's loss equal to model.evaluate's.
EPSILON = 1e-7


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
    )
    return metrics, matrix
