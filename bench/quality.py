"""How trustworthy the answers are, measured through the HTTP API: `python -m bench.quality`.

- photos: Fashion-MNIST test items as product photos (bench/photos.py) against the same items as
  pixels; the ratio of the two accuracies;
- out-of-distribution: the share of each set from bench/ood.py flagged, and the AUROC of the
  score against the test set's, beside the share of the test set and of the photos flagged;
- calibration: /evaluate on the test set (accuracy, ECE).

It starts the service on loopback over the given store (default: the bundled one) and writes
bench/results/quality.json. The tests call the same functions with an in-process client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.attacks import running_service
from bench.ood import ood_sets
from bench.photos import Photo, product_photos
from core.datasets import load_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "quality.json"
FILES_PER_REQUEST = 50
PIXELS_PER_REQUEST = 500


@dataclass(frozen=True)
class Predictions:
    class_ids: np.ndarray
    ood: np.ndarray | None  # bool flags; None when the served version has no detector
    scores: np.ndarray | None


def predict_pixels(client: httpx.Client, images: np.ndarray) -> Predictions:
    parts = [
        client.post("/predict", json={"instances": images[i : i + PIXELS_PER_REQUEST].astype(int).tolist()})
        for i in range(0, len(images), PIXELS_PER_REQUEST)
    ]
    return _predictions(parts)


def predict_photos(client: httpx.Client, photos: Sequence[Photo]) -> Predictions:
    parts = []
    for start in range(0, len(photos), FILES_PER_REQUEST):
        chunk = photos[start : start + FILES_PER_REQUEST]
        files = [("files", (f"{start + i}", p.data, p.content_type)) for i, p in enumerate(chunk)]
        parts.append(client.post("/predict", files=files))
    return _predictions(parts)


def _predictions(responses: list[httpx.Response]) -> Predictions:
    rows: list[dict[str, Any]] = []
    for response in responses:
        if response.status_code != 200:
            raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:200]}")
        rows.extend(response.json()["predictions"])
    flags = [row["ood"] for row in rows]
    scored = all(flag is not None for flag in flags)
    return Predictions(
        np.array([row["class_id"] for row in rows]),
        np.array(flags, dtype=bool) if scored else None,
        np.array([row["ood_score"] for row in rows], dtype=np.float64) if scored else None,
    )


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside input > score of an inside one), ties counting half (Mann-Whitney U)."""
    scores = np.concatenate([inside, outside])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of tied scores.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


@dataclass(frozen=True)
class OodRow:
    name: str
    count: int
    flagged: float
    auroc: float | None


def measure(client: httpx.Client, items: int, ood_count: int, seed: int = 0) -> dict[str, Any]:
    test = load_fashion_mnist(allow_download=False).test
    if test is None:
        raise SystemExit("the Fashion-MNIST test split is missing")
    images, labels = test.images[:items], test.labels[:items]
    pixels = predict_pixels(client, images)
    photos = predict_photos(client, product_photos(images, seed=seed))
    pixel_accuracy = float((pixels.class_ids == labels).mean())
    photo_accuracy = float((photos.class_ids == labels).mean())
    report: dict[str, Any] = {
        "items": items,
        "pixel_accuracy": pixel_accuracy,
        "photo_accuracy": photo_accuracy,
        "photo_ratio": photo_accuracy / pixel_accuracy,
    }
    evaluation = client.post("/evaluate", json={"dataset": "test"}).json()
    report["test"] = {"accuracy": evaluation["accuracy"], "ece": evaluation["ece"]}
    everything = predict_pixels(client, test.images)
    if everything.scores is None or everything.ood is None or photos.ood is None:
        report["ood"] = None
        return report
    rows = [OodRow("Fashion-MNIST test set", len(test.images), float(everything.ood.mean()), None)]
    rows.append(OodRow("product photos of test items", items, float(photos.ood.mean()), None))
    for name, inputs in ood_sets(ood_count, seed=seed, test_items=test.images).items():
        result = predict_pixels(client, inputs)
        assert result.ood is not None and result.scores is not None
        rows.append(
            OodRow(name, len(inputs), float(result.ood.mean()), auroc(everything.scores, result.scores))
        )
    report["ood"] = [asdict(row) for row in rows]
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"photos: {report['photo_accuracy']:.4f} vs pixels {report['pixel_accuracy']:.4f} on "
        f"{report['items']} test items: ratio {report['photo_ratio']:.3f}",
        f"test set: accuracy {report['test']['accuracy']:.4f}, ECE {report['test']['ece']:.4f}",
    ]
    if report["ood"]:
        lines += ["", "| set | images | flagged | AUROC vs test |", "|---|---:|---:|---:|"]
        for row in report["ood"]:
            area = f"{row['auroc']:.3f}" if row["auroc"] is not None else "-"
            lines.append(f"| {row['name']} | {row['count']} | {row['flagged']:.1%} | {area} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--store", type=Path, default=REPO / "models")
    parser.add_argument("--version", type=int, help="pin a version (default: the current one)")
    parser.add_argument("--items", type=int, default=1000, help="test items sent as pixels and photos")
    parser.add_argument("--ood-count", type=int, default=1000, help="images per out-of-distribution set")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = {"MODEL_STORE": str(args.store.resolve()), "LOG_LEVEL": "warning"}
    if args.version:
        env["MODEL_VERSION"] = str(args.version)
    with (
        running_service(env) as (port, _),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client,
    ):
        report = measure(client, args.items, args.ood_count)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
