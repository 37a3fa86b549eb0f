"""The teacher: a small CNN trained in the same job to teach the MLP, never published or served.

A convolutional network sees shapes wherever they are in the image; its softened outputs carry what
it learnt (which classes look alike, how much) to the MLP, which cannot learn that from labels alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from core.datasets import Split
from core.preprocessing import INPUT_SHAPE, MAX_PIXEL
from training.augment import one_hot, steps_per_epoch, training_data
from training.callbacks import EpochProgress
from training.config import TrainConfig

TEACHER_DIR = "teacher"
# The teacher always trains on images shifted by up to 2 pixels: a CNN gains from them (it can tell a
# moved garment for the same one), while an MLP of the student's size loses (docs/training.md).
TEACHER_SHIFT = 2
CHECKPOINT_FILE = "best.keras"


def build_teacher(num_classes: int) -> keras.Model:
    """Two convolution layers, each pooled, and a dense head, giving logits (raw 0-255 pixels in).

    Small on purpose: about 40 s an epoch on two cores here, 0.93 validation accuracy in 12 epochs
    (two convolutions per block took 100 s an epoch).
    """
    inputs = keras.Input(shape=INPUT_SHAPE, name="pixels")
    x = keras.layers.Rescaling(1.0 / MAX_PIXEL)(inputs)
    x = keras.layers.Reshape((*INPUT_SHAPE, 1))(x)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_teacher")


def fit_teacher(
    train: Split, validation: Split, num_classes: int, config: TrainConfig, run_dir: Path
) -> keras.Model:
    """Fit (or, when run_dir holds a finished teacher, reload) the teacher; resumable like the student."""
    directory = run_dir / TEACHER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    done = directory / "done"
    if not done.exists():
        keras.utils.set_random_seed(config.seed)
        teacher = build_teacher(num_classes)
        steps = steps_per_epoch(train, config) * config.teacher_epochs
        schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)
        teacher.compile(
            optimizer=keras.optimizers.Adam(learning_rate=schedule),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        teacher.fit(
            training_data(train, num_classes, replace(config, augment_shift=TEACHER_SHIFT)),
            validation_data=(validation.images.astype(np.float32), one_hot(validation.labels, num_classes)),
            epochs=config.teacher_epochs,
            callbacks=[
                keras.callbacks.ModelCheckpoint(
                    directory / CHECKPOINT_FILE, monitor="val_accuracy", mode="max", save_best_only=True
                ),
                keras.callbacks.BackupAndRestore(str(directory / "backup")),
                EpochProgress(config.teacher_epochs, "teacher "),
            ],
            shuffle=False,
            verbose=0,
        )
        done.touch()
    best: keras.Model = keras.models.load_model(directory / CHECKPOINT_FILE, compile=False)
    return best


def accuracy_of(teacher: keras.Model, split: Split) -> float:
    logits = teacher.predict(split.images.astype(np.float32), batch_size=1024, verbose=0)
    return float((np.argmax(logits, axis=1) == split.labels).mean())
