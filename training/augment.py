"""The training pipeline: shuffled batches of images, mirrored and shifted as the recipe says, with targets.

Targets are one-hot labels; with a teacher, each image's targets are the labels followed by the
teacher's softened probabilities on the very image the student sees, mirrored or shifted
("consistent teaching"): `(batch, 2 * classes)`. Without shifts the images an epoch holds are the
same every epoch, so the teacher scores them once; with shifts it scores every batch as it is drawn.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from core.datasets import Split
from training.config import TrainConfig


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def steps_per_epoch(train: Split, config: TrainConfig) -> int:
    return int(np.ceil(len(train) * (2 if config.augment_flip else 1) / config.batch_size))


def training_data(
    train: Split, num_classes: int, config: TrainConfig, teacher: keras.Model | None = None
) -> tf.data.Dataset:
    """One epoch: every image (and, with flips, its mirror image) once, in a fresh order each epoch."""
    images = train.images.astype(np.float32)
    labels = one_hot(train.labels, num_classes)
    if config.augment_flip:
        # Clothes look the same mirrored: each epoch sees every image and its mirror image.
        images = np.concatenate([images, images[:, :, ::-1]])
        labels = np.concatenate([labels, labels])
    if teacher is not None and not config.augment_shift:
        labels = np.concatenate(
            [labels, _teacher_targets(teacher, images, config.distill_temperature)], axis=1
        )
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    data = data.shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True)
    data = data.batch(config.batch_size)
    if config.augment_shift:
        shift = config.augment_shift
        data = data.map(lambda x, y: (random_shift(x, shift), y), num_parallel_calls=tf.data.AUTOTUNE)
        if teacher is not None:
            temperature = config.distill_temperature
            data = data.map(lambda x, y: (x, tf.concat([y, _softened(teacher(x), temperature)], axis=1)))
    return data.prefetch(tf.data.AUTOTUNE)


def validation_targets(
    validation: Split, num_classes: int, config: TrainConfig, teacher: keras.Model | None = None
) -> np.ndarray:
    """The validation split's targets in the training targets' layout (validation is never augmented)."""
    labels = one_hot(validation.labels, num_classes)
    if teacher is None:
        return labels
    images = validation.images.astype(np.float32)
    return np.concatenate([labels, _teacher_targets(teacher, images, config.distill_temperature)], axis=1)


def random_shift(images: tf.Tensor, pixels: int) -> tf.Tensor:
    """Each image moved by its own random offset of up to `pixels` in each direction, zeros filled in."""
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels]])
    count = tf.shape(images)[0]
    offsets = tf.random.uniform((count, 2), 0, 2 * pixels + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]  # (batch, height)
    columns = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]  # (batch, width)
    picked_rows = tf.gather(padded, rows, batch_dims=1)  # (batch, height, width + 2p)
    return tf.gather(picked_rows, columns, axis=2, batch_dims=1)


def _teacher_targets(teacher: keras.Model, images: np.ndarray, temperature: float) -> np.ndarray:
    logits = teacher.predict(images, batch_size=1024, verbose=0)
    return np.asarray(_softened(logits, temperature))


def _softened(logits: tf.Tensor | np.ndarray, temperature: float) -> tf.Tensor:
    return tf.nn.softmax(tf.convert_to_tensor(logits, dtype=tf.float32) / temperature, axis=-1)
