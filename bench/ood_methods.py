"""Which out-of-distribution score to use, measured: `python -m bench.ood_methods`.

Every candidate is fitted on the served version's training split (where it needs fitting), thresholded
so that 95 % of the validation split is not flagged, and scored on the test set and on each set of
bench/ood.py. Candidates:

- msp: 1 - the maximum softmax probability (the usual weak baseline);
- energy: -logsumexp(logits) (Liu et al. 2020);
- features: Mahalanobis distance on the penultimate features, class means, one shared covariance
  (Lee et al. 2018);
- statistics: the same on core/ood.py's input statistics alone;
- served: what the version serves (core/ood.py: features + statistics, a covariance per class).

Needs TensorFlow (the dev install) to read the last layer's weights for the logits.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.ood import ood_sets
from bench.quality import auroc
from core.datasets import load_fashion_mnist
from core.engines import load_engine, load_probe, quiet_tensorflow
from core.ood import FLAG_QUANTILE, input_statistics, load_detector
from core.store import MODEL_FILE, ModelStore

REPO = Path(__file__).resolve().parent.parent
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (features, logits, images) -> scores


def shared_covariance(vectors: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    spread = vectors.std(axis=0)
    spread[spread < 1e-9] = 1.0
    scaled = vectors / spread
    means = np.stack([scaled[labels == c].mean(axis=0) for c in np.unique(labels)])
    centred = scaled - means[np.searchsorted(np.unique(labels), labels)]
    precision = np.linalg.inv(centred.T @ centred / len(scaled) + 1e-2 * np.eye(scaled.shape[1]))

    def distance(v: np.ndarray) -> np.ndarray:
        z = v / spread
        distances = [np.einsum("ij,jk,ik->i", z - m, precision, z - m) for m in means]
        return np.stack(distances, axis=1).min(axis=1)

    return distance


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ood_methods", description=__doc__)
    parser.add_argument("--store", type=Path, default=REPO / "models")
    parser.add_argument("--version", type=int, help="default: the current one")
    parser.add_argument("--count", type=int, default=1000, help="images per out-of-distribution set")
    args = parser.parse_args()
    quiet_tensorflow(os.environ)
    import keras

    store = ModelStore(args.store, "fashion-mnist")
    version = args.version or store.current_version()
    assert version is not None, "no current version"
    directory = store.version_dir(version)
    engine = load_engine(directory)
    detector = load_detector(directory, load_probe(directory))
    assert detector is not None, f"version {version} has no OOD detector"
    kernel, bias = (
        keras.models.load_model(directory / MODEL_FILE, compile=False)
        .get_layer("probabilities")
        .get_weights()
    )
    metadata = store.read_metadata(version)
    size = int(metadata.training.get("validation_size", 5000))
    data = load_fashion_mnist(allow_download=False)
    assert data.test is not None

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = engine.predict(images.astype(np.float32))
        assert outputs.features is not None
        features = outputs.features.astype(np.float64)
        return features, features @ kernel + bias, images

    train = run(data.train.images[:-size])
    labels = data.train.labels[:-size]
    by_features = shared_covariance(train[0], labels)
    by_statistics = shared_covariance(input_statistics(train[2]), labels)
    scorers: dict[str, Scorer] = {
        "msp": lambda f, lg, x: 1 - np.exp(lg - np.logaddexp.reduce(lg, axis=1, keepdims=True)).max(axis=1),
        "energy": lambda f, lg, x: -np.logaddexp.reduce(lg, axis=1),
        "features": lambda f, lg, x: by_features(f),
        "statistics": lambda f, lg, x: by_statistics(input_statistics(x)),
        "served": lambda f, lg, x: detector.score(f, x),
    }
    validation, test = run(data.train.images[-size:]), run(data.test.images)
    sets = {name: run(images) for name, images in ood_sets(args.count, test_items=data.test.images).items()}
    header = ["method", "test flagged", *sets]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, scorer in scorers.items():
        threshold = np.quantile(scorer(*validation), FLAG_QUANTILE)
        inside = scorer(*test)
        cells = [name, f"{(inside > threshold).mean():.1%}"]
        for outside in sets.values():
            scores = scorer(*outside)
            cells.append(f"{(scores > threshold).mean():.1%} / {auroc(inside, scores):.3f}")
        print("| " + " | ".join(cells) + " |")
    print("\ncells: flagged at the threshold / AUROC against the test set")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
