"""Calibration: temperature scaling recovers a known temperature; ECE and reliability bins by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluation import expected_calibration_error, reliability_bins
from training.calibration import calibration_metrics, fit_temperature, softmax


def sampled(temperature: float, count: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): that T calibrates them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 10))
    probabilities = softmax(logits, temperature)
    labels = (probabilities.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(temperature: float) -> None:
    logits, labels = sampled(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_calibration_lowers_ece_and_nll_and_never_changes_accuracy() -> None:
    logits, labels = sampled(1.7)
    before = calibration_metrics(logits, labels)
    after = calibration_metrics(logits, labels, fit_temperature(logits, labels))
    assert after.ece < before.ece / 3 and after.nll < before.nll
    assert after.accuracy == before.accuracy


def test_ece_is_the_count_weighted_gap_between_confidence_and_accuracy() -> None:
    # Two predictions at 0.95 confidence (one right), two at 0.55 (both right).
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1])
    bins = reliability_bins(probabilities, labels)
    assert len(bins) == 15 and sum(b.count for b in bins) == 4
    high = next(b for b in bins if b.lower < 0.95 <= b.upper)
    low = next(b for b in bins if b.lower < 0.55 <= b.upper)
    assert (high.count, high.accuracy, high.confidence) == (2, 0.5, pytest.approx(0.95))
    assert (low.count, low.accuracy, low.confidence) == (2, 1.0, pytest.approx(0.55))
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert all(b.accuracy is None for b in bins if b.count == 0)
