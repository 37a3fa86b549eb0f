"""Finishing a trained model and publishing it as a version: calibration, OOD detector, metrics, files.

Both a training job and `republish` (new artifacts for an existing version's weights) end here:

1. temperature scaling is fitted on the validation split and folded into the served model;
2. the OOD detector is fitted on the training split's features and inputs, its threshold on the
   validation split;
3. validation and test metrics (of the calibrated model), calibration before/after and the
   detector's flagged fractions go into metadata.json; the reliability diagram beside them;
4. the files are written to a staging folder and published atomically; the promotion policy runs.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from core.datasets import Dataset, Split
from core.evaluation import evaluate_probabilities, reliability_bins
from core.metadata import CalibrationReport, EvaluationMetrics, ModelMetadata, OodReport
from core.ood import FLAG_QUANTILE, METHOD, OodDetector
from core.store import CURVES_FILE, HISTORY_FILE, MODEL_FILE, ONNX_FILE, RELIABILITY_FILE, ModelStore
from training.calibration import calibration_metrics, fit_temperature, softmax
from training.config import TrainConfig
from training.export import output_weights, penultimate, serving_model, write_serving_artifacts
from training.plots import plot_reliability

PromotePolicy = Literal["if-better", "always", "never"]
PROBE_EXAMPLES = 32
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    version: int
    promoted: bool
    metadata: ModelMetadata


@dataclass(frozen=True)
class Provenance:
    """How the weights came to be: recorded in the version as it is."""

    training: dict[str, Any]
    epochs_run: int
    best_epoch: int
    training_seconds: float
    files: dict[str, Path] = field(
        default_factory=dict
    )  # name in the version -> file to copy (history, curves)
    derived_from: int | None = None


@dataclass(frozen=True)
class _Scored:
    """A split's features and logits under the trained (uncalibrated) weights."""

    split: Split
    features: np.ndarray
    logits: np.ndarray


def publish_model(
    model: keras.Model,
    dataset: Dataset,
    train: Split,
    validation: Split,
    store: ModelStore,
    provenance: Provenance,
    promote: PromotePolicy,
) -> TrainResult:
    """Calibrate, fit the OOD detector, evaluate and publish `model` as the store's next version."""
    features_of = penultimate(model)
    kernel, bias = output_weights(model)

    def scored(split: Split) -> _Scored:
        features = np.asarray(
            features_of.predict(split.images.astype(np.float32), batch_size=2048, verbose=0)
        )
        return _Scored(split, features, features.astype(np.float64) @ kernel + bias)

    splits = {"validation": scored(validation)}
    if dataset.test:
        splits["test"] = scored(dataset.test)
    temperature = fit_temperature(splits["validation"].logits, validation.labels)
    calibration = CalibrationReport(
        temperature=temperature,
        before={name: calibration_metrics(s.logits, s.split.labels) for name, s in splits.items()},
        after={
            name: calibration_metrics(s.logits, s.split.labels, temperature) for name, s in splits.items()
        },
    )
    fitted = scored(train)
    detector = OodDetector.fit(
        fitted.features, train.images, train.labels, splits["validation"].features, validation.images
    )
    ood = OodReport(
        method=METHOD,
        threshold=detector.threshold,
        flag_quantile=FLAG_QUANTILE,
        flagged={
            name: float(detector.flag(detector.score(s.features, s.split.images)).mean())
            for name, s in splits.items()
        },
    )
    metrics = {name: _metrics(s, temperature, dataset.class_names) for name, s in splits.items()}
    metadata = ModelMetadata(
        name=store.name,
        created_at=datetime.now(UTC),
        class_names=dataset.class_names,
        training=provenance.training,
        epochs_run=provenance.epochs_run,
        best_epoch=provenance.best_epoch,
        training_seconds=provenance.training_seconds,
        validation=metrics["validation"],
        test=metrics.get("test"),
        datasets=dataset.checksums,
        framework={"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
        calibration=calibration,
        ood=ood,
        derived_from=provenance.derived_from,
    )
    served = serving_model(model, temperature)
    shown = splits.get("test", splits["validation"])
    with store.staging() as staging:
        served.save(staging / MODEL_FILE)
        for name, source in provenance.files.items():
            shutil.copyfile(source, staging / name)
        plot_reliability(
            reliability_bins(softmax(shown.logits), shown.split.labels),
            reliability_bins(softmax(shown.logits, temperature), shown.split.labels),
            f"{'test' if 'test' in splits else 'validation'} split, T = {temperature:.3f}",
            staging / RELIABILITY_FILE,
        )
        artifacts = write_serving_artifacts(served, staging, validation.images[:PROBE_EXAMPLES], detector)
        version = store.publish(staging, metadata.model_copy(update={"artifacts": artifacts}))
    promoted = apply_policy(store, version, promote)
    return TrainResult(version, promoted, store.read_metadata(version))


def _metrics(scored: _Scored, temperature: float, class_names: list[str]) -> EvaluationMetrics:
    metrics, _ = evaluate_probabilities(softmax(scored.logits, temperature), scored.split.labels, class_names)
    return metrics


def apply_policy(store: ModelStore, version: int, policy: PromotePolicy) -> bool:
    """Promote as the policy says. A version published without model.onnx (its export failed) is
    marked so by its `artifacts`, and `if-better` does not promote it: the serving image has no
    TensorFlow to run model.keras, so every replica would refuse it. `always` still does."""
    if policy == "if-better" and ONNX_FILE not in store.read_metadata(version).artifacts:
        logger.warning(
            "version %d has no %s: not promoted (the serving image cannot run it)", version, ONNX_FILE
        )
        return False
    if policy == "always":
        store.promote(version, reason="promoted by training job (always)")
        return True
    if policy == "if-better":
        return store.promote_if_better(version)
    return False


def split_validation(train: Split, config: TrainConfig) -> tuple[Split, Split]:
    """Hold out the last validation_size images (at most a fifth of the set) for model selection."""
    size = min(config.validation_size, len(train) // 5)
    if size < 1:
        raise ValueError(f"the training set has {len(train)} images, too few to hold out a validation set")
    fit_part = Split(train.images[:-size], train.labels[:-size]).head(config.max_train_samples)
    return fit_part, Split(train.images[-size:], train.labels[-size:])


def republish(store: ModelStore, version: int, dataset: Dataset, promote: PromotePolicy) -> TrainResult:
    """Publish an existing version's weights again with today's artifacts (calibration, OOD detector).

    The source version stays as it is (versions are immutable); the new one records `derived_from`.
    The validation split is held out as the source's training job held it out.
    """
    source = store.read_metadata(version)
    if source.class_names != dataset.class_names:
        raise ValueError(
            f"version {version} has classes {source.class_names}, the data {dataset.class_names}"
        )
    version_dir = store.version_dir(version)
    model = keras.models.load_model(version_dir / MODEL_FILE, compile=False, safe_mode=True)
    held_out = TrainConfig(
        validation_size=int(source.training.get("validation_size", TrainConfig.validation_size)),
        max_train_samples=source.training.get("max_train_samples"),
    )
    train, validation = split_validation(dataset.train, held_out)
    provenance = Provenance(
        training=source.training,
        epochs_run=source.epochs_run,
        best_epoch=source.best_epoch,
        training_seconds=source.training_seconds,
        files={
            name: version_dir / name for name in (HISTORY_FILE, CURVES_FILE) if (version_dir / name).is_file()
        },
        derived_from=version,
    )
    return publish_model(model, dataset, train, validation, store, provenance, promote)
