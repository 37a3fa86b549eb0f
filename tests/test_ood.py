"""The out-of-distribution detector: fitted threshold, statistics, storage and the load-time check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.engines import load_probe
from core.ood import FLAG_QUANTILE, OodDetector, OodError, input_statistics, load_detector
from core.store import OOD_FILE, PROBE_FILE, ModelStore
from tests.helpers import synthetic_images


def fitted(seed: int = 0) -> tuple[OodDetector, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 3000)
    images = synthetic_images(labels, seed=seed).astype(np.float32)
    features = rng.normal(labels[:, None].astype(float), 1.0, (3000, 8))  # class-shifted features
    detector = OodDetector.fit(features[:2000], images[:2000], labels[:2000], features[2000:], images[2000:])
    return detector, features[2000:], images[2000:]


def test_the_threshold_leaves_the_chosen_share_of_validation_unflagged() -> None:
    detector, features, images = fitted()
    flagged = detector.flag(detector.score(features, images)).mean()
    assert flagged == pytest.approx(1 - FLAG_QUANTILE, abs=0.002)


def test_inputs_unlike_the_training_data_score_higher() -> None:
    detector, features, images = fitted()
    inside = detector.score(features, images)
    blank = detector.score(features, np.zeros_like(images))
    strange_features = detector.score(features + 6.0, images)
    assert np.median(blank) > detector.threshold and np.median(strange_features) > detector.threshold
    assert np.median(inside) < detector.threshold


def test_input_statistics_tell_blank_noise_and_an_item_apart() -> None:
    item = np.zeros((28, 28))
    item[4:24, 8:20] = 200
    noise = np.random.default_rng(0).uniform(0, 255, (28, 28))
    stats = input_statistics(np.stack([np.zeros((28, 28)), noise, item]))
    assert stats.shape == (3, 12) and np.isfinite(stats).all()
    blank, noisy, solid = stats
    assert blank[0] == 0 and blank[5] == 0  # no ink, no extent
    assert solid[9] == 0 and noisy[9] > 0.3  # a garment is mirror-symmetric, noise is not
    assert solid[7] == pytest.approx(1.0)  # the item fills its box
    assert noisy[4] > 0.3 and solid[4] == 0  # ink on the frame's edge


def test_a_detector_survives_saving_and_loading(tmp_path: Path) -> None:
    detector, features, images = fitted()
    detector.save(tmp_path / OOD_FILE)
    loaded = OodDetector.load(tmp_path / OOD_FILE, feature_count=8)
    assert np.allclose(loaded.score(features, images), detector.score(features, images))
    with pytest.raises(OodError, match="fitted on 8 features"):
        OodDetector.load(tmp_path / OOD_FILE, feature_count=16)


def test_a_version_is_refused_when_its_detector_disagrees_with_its_probe(store_copy: Path) -> None:
    version_dir = ModelStore(store_copy, "fashion-mnist").version_dir(1)
    probe = load_probe(version_dir)
    assert load_detector(version_dir, probe) is not None
    with np.load(version_dir / OOD_FILE) as data:
        arrays = dict(data)
    arrays["threshold"] = np.float64(arrays["threshold"])
    arrays["means"] = arrays["means"] * 1.01  # a subtly different detector
    np.savez(version_dir / OOD_FILE, **arrays)
    with pytest.raises(OodError, match="disagrees with the published OOD scores"):
        load_detector(version_dir, probe)
    (version_dir / OOD_FILE).unlink()
    with pytest.raises(OodError, match="missing"):
        load_detector(version_dir, probe)


def test_a_version_published_without_a_detector_has_none(store_copy: Path) -> None:
    version_dir = ModelStore(store_copy, "fashion-mnist").version_dir(1)
    (version_dir / OOD_FILE).unlink()
    with np.load(version_dir / PROBE_FILE) as data:
        np.savez(version_dir / PROBE_FILE, inputs=data["inputs"], outputs=data["outputs"])
    assert load_detector(version_dir, load_probe(version_dir)) is None
