"""Answers people can trust, on the real dataset through the real API (bench/quality.py measures the same):

- product photos of test items are classified at >= 0.97x the accuracy of the same items as pixels;
- the OOD flag catches >= 90 % of each out-of-distribution set, and <= 6 % of the test set;
- probabilities are calibrated: test-set ECE <= 0.015, with the accuracy calibration started from.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.ood import natural_image_files, ood_sets
from bench.photos import product_photos
from bench.quality import auroc, predict_photos, predict_pixels
from core.datasets import Dataset
from core.store import ModelStore
from tests.helpers import BUNDLED_STORE, make_client

pytestmark = [pytest.mark.dataset, pytest.mark.slow]
PHOTO_ITEMS = 600
OOD_IMAGES = 300


def test_product_photos_are_classified_as_well_as_their_pixels(
    bundled_client: TestClient, real_dataset: Dataset
) -> None:
    assert real_dataset.test is not None
    images, labels = real_dataset.test.images[:PHOTO_ITEMS], real_dataset.test.labels[:PHOTO_ITEMS]
    pixels = predict_pixels(bundled_client, images)
    photos = predict_photos(bundled_client, product_photos(images, seed=11))
    pixel_accuracy = (pixels.class_ids == labels).mean()
    photo_accuracy = (photos.class_ids == labels).mean()
    assert pixel_accuracy > 0.85
    assert photo_accuracy >= 0.97 * pixel_accuracy, (photo_accuracy, pixel_accuracy)
    assert photos.ood is not None and photos.ood.mean() <= 0.10  # photos are in distribution


def test_out_of_distribution_sets_are_flagged_and_the_test_set_is_not(
    bundled_client: TestClient, real_dataset: Dataset
) -> None:
    assert real_dataset.test is not None
    inside = predict_pixels(bundled_client, real_dataset.test.images)
    assert inside.ood is not None and inside.scores is not None
    assert inside.ood.mean() <= 0.06
    sets = ood_sets(OOD_IMAGES, seed=3, test_items=real_dataset.test.images)
    assert natural_image_files(), "scikit-image's sample photographs are part of the dev install"
    assert set(sets) == {
        "digits and letters",
        "noise",
        "blank and near-blank",
        "natural images",
        "inverted items",
    }
    for name, images in sets.items():
        outside = predict_pixels(bundled_client, images)
        assert outside.ood is not None and outside.scores is not None
        assert outside.ood.mean() >= 0.90, (name, outside.ood.mean())
        assert auroc(inside.scores, outside.scores) >= 0.95, name


def test_probabilities_are_calibrated_and_accuracy_is_unchanged(
    bundled_client: TestClient, real_dataset: Dataset
) -> None:
    body = bundled_client.post("/evaluate", json={"dataset": "test"}).json()
    metadata = ModelStore(BUNDLED_STORE, "fashion-mnist").read_metadata(body["model"]["version"])
    assert metadata.calibration is not None
    assert body["ece"] <= 0.015
    assert body["ece"] < metadata.calibration.before["test"].ece  # what calibration started from
    assert body["accuracy"] == pytest.approx(metadata.calibration.before["test"].accuracy, abs=0.001)
    assert sum(b["count"] for b in body["reliability"]) == 10_000
    assert body["ood_flagged"] <= 0.06


@pytest.fixture(scope="module")
def version_one_client() -> Iterator[TestClient]:
    yield from make_client(BUNDLED_STORE, model_version=1)


def test_a_version_published_before_ood_detection_still_serves_with_null_flags(
    version_one_client: TestClient,
) -> None:
    response = version_one_client.post("/predict", json={"instances": [np.zeros((28, 28)).tolist()]})
    prediction = response.json()["predictions"][0]
    assert response.json()["model"]["version"] == 1
    assert prediction["ood"] is None and prediction["ood_score"] is None
    # Labelled images sent with the request: this must hold on a machine without the dataset too.
    images = [np.zeros((28, 28)).tolist(), np.full((28, 28), 255).tolist()]
    evaluation = version_one_client.post("/evaluate", json={"instances": images, "labels": [0, 1]})
    assert evaluation.status_code == 200, evaluation.text
    assert evaluation.json()["ood_flagged"] is None and evaluation.json()["ece"] >= 0
