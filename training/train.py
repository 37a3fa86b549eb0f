"""One training job: fit with checkpoints and resume, then publish the best epoch (training/publish.py)."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from core.datasets import Dataset, Split
from core.store import CURVES_FILE, HISTORY_FILE, ModelStore
from training.augment import steps_per_epoch, training_data, validation_targets
from training.callbacks import EpochProgress
from training.config import TrainConfig
from training.model import build_model, compile_model
from training.plots import plot_learning_curves
from training.publish import PromotePolicy, Provenance, TrainResult, publish_model, split_validation
from training.teacher import accuracy_of, fit_teacher

CHECKPOINT_FILE = "best.keras"


def train_and_publish(
    dataset: Dataset,
    store: ModelStore,
    config: TrainConfig,
    run_dir: Path,
    promote: PromotePolicy = "if-better",
) -> TrainResult:
    """Train on the dataset, publish the best epoch's model as a new version, and apply the policy."""
    train, validation = split_validation(dataset.train, config)
    num_classes = len(dataset.class_names)
    started = time.monotonic()
    teacher = fit_teacher(train, validation, num_classes, config, run_dir) if config.teacher_epochs else None
    model = fit(train, validation, num_classes, config, run_dir, teacher)
    seconds = time.monotonic() - started
    taught = {"teacher_validation_accuracy": round(accuracy_of(teacher, validation), 4)} if teacher else {}

    history = _read_history(run_dir / HISTORY_FILE)
    best_epoch = int(np.argmax(history["val_accuracy"])) + 1
    plot_learning_curves(history, best_epoch, run_dir / CURVES_FILE)
    provenance = Provenance(
        training={
            **config.to_dict(),
            **taught,
            "train_samples": len(train),
            "dataset_source": dataset.source,
        },
        epochs_run=len(history["epoch"]),
        best_epoch=best_epoch,
        training_seconds=round(seconds, 1),
        files={HISTORY_FILE: run_dir / HISTORY_FILE, CURVES_FILE: run_dir / CURVES_FILE},
    )
    return publish_model(model, dataset, train, validation, store, provenance, promote)


def fit(
    train: Split,
    validation: Split,
    num_classes: int,
    config: TrainConfig,
    run_dir: Path,
    teacher: keras.Model | None = None,
) -> keras.Model:
    """Fit and return the best epoch's model, taught by `teacher` when there is one (training/teacher.py).
    Re-running with the same run_dir resumes an interrupted job."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    model = build_model(num_classes, config.hidden_units, config.activation, config.dropout_rate)
    compile_model(model, config, steps_per_epoch(train, config))
    callbacks: list[keras.callbacks.Callback] = [
        # Stop once validation accuracy has not improved for `patience` epochs; keep the best weights.
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.patience, restore_best_weights=True
        ),
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema_momentum else []),
        # The best epoch on disk survives a crash and is what gets published.
        keras.callbacks.ModelCheckpoint(
            run_dir / CHECKPOINT_FILE, monitor="val_accuracy", mode="max", save_best_only=True
        ),
        # Saves state every epoch; a re-run with the same run_dir resumes from the last finished epoch.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        # Append, so a resumed run keeps the epochs from before the interruption.
        keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=True),
        EpochProgress(config.epochs),
    ]
    validation_data = (
        validation.images.astype(np.float32),
        validation_targets(validation, num_classes, config, teacher),
    )
    model.fit(
        training_data(train, num_classes, config, teacher),
        validation_data=validation_data,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=0,
    )
    best: keras.Model = keras.models.load_model(run_dir / CHECKPOINT_FILE, compile=False)
    return best


def _read_history(path: Path) -> dict[str, list[float]]:
    """The CSV log as columns; a resumed run appends a second header and may repeat an epoch (last wins)."""
    lines = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    header = lines[0]
    by_epoch = {int(row[0]): row for row in lines[1:] if row != header}
    rows = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    return {key: [float(row[i]) for row in rows] for i, key in enumerate(header)}
