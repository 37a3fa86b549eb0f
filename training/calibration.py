"""Temperature scaling (Guo et al. 2017): one number that makes confidences match accuracy.

Fitted on the validation split after early stopping has chosen the weights, by minimising the
negative log-likelihood of softmax(logits / T). Dividing the last layer's weights and bias by T folds
it into the model, so every engine serves calibrated probabilities and the classes never change.
"""

from __future__ import annotations

import math

import numpy as np

from core.evaluation import EPSILON, expected_calibration_error
from core.metadata import CalibrationMetrics

# The search range for T, on a log scale; a model needing more is broken, not miscalibrated.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
    return float((log_norm - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL (convex in 1/T): golden-section search on log T."""
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    for _ in range(80):
        left = high - _GOLDEN * (high - low)
        right = low + _GOLDEN * (high - low)
        if negative_log_likelihood(logits, labels, math.exp(left)) <= negative_log_likelihood(
            logits, labels, math.exp(right)
        ):
            high = right
        else:
            low = left
    return math.exp((low + high) / 2)


def calibration_metrics(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> CalibrationMetrics:
    probabilities = softmax(logits, temperature)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], EPSILON, 1.0)
    return CalibrationMetrics(
        accuracy=float((probabilities.argmax(axis=1) == labels).mean()),
        nll=float(-np.log(picked).mean()),
        ece=expected_calibration_error(probabilities, labels),
    )
