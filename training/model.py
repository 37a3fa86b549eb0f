"""The classifier: build (architecture, pixel scaling inside) and compile (optimizer, loss) separately."""

from __future__ import annotations

import keras
from keras import ops

from core.preprocessing import INPUT_SHAPE, MAX_PIXEL
from training.config import TrainConfig

OUTPUT_LAYER = "probabilities"

_OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "nadam": keras.optimizers.Nadam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def build_model(
    num_classes: int,
    hidden_units: tuple[int, ...] = TrainConfig.hidden_units,
    activation: str = TrainConfig.activation,
    dropout_rate: float = TrainConfig.dropout_rate,
) -> keras.Model:
    """Flatten(28x28) -> Dense hidden layers -> Dense(num_classes, softmax), taking raw 0-255 pixels."""
    inputs = keras.Input(shape=INPUT_SHAPE, name="pixels")
    # Scaling lives in the model so serving can never scale differently from training.
    x = keras.layers.Rescaling(1.0 / MAX_PIXEL, name="scale")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"dense_{index}")(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name=f"dropout_{index}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="mlp_classifier")


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int) -> None:
    """Labels are one-hot so that label smoothing applies; with a teacher, targets are the labels
    followed by the teacher's softened probabilities (training/augment.py) and the loss mixes both."""
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, steps_per_epoch * config.epochs)
        )
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    taught = config.teacher_epochs > 0
    model.compile(
        optimizer=_OPTIMIZERS[config.optimizer](learning_rate=learning_rate, **ema),
        loss=DistillationLoss(config.distill_temperature, config.distill_weight, config.label_smoothing)
        if taught
        else keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[accuracy if taught else "accuracy"],
    )


class DistillationLoss(keras.losses.Loss):
    """weight * T^2 * KL(teacher at T || student at T) + (1 - weight) * CE(labels, student).

    The soft-target loss of Hinton et al. 2015, "Distilling the knowledge in a neural network".

    The student outputs probabilities; log(p) are its logits up to a constant, which softmax ignores,
    so softmax(log(p) / T) is the student softened at T.
    """

    def __init__(
        self, temperature: float, weight: float, label_smoothing: float = 0.0, **kwargs: object
    ) -> None:
        super().__init__(name="distillation", **kwargs)
        self.temperature = temperature
        self.weight = weight
        self.label_smoothing = label_smoothing

    def call(self, y_true: object, y_pred: object) -> object:
        labels, soft = ops.split(y_true, 2, axis=-1)
        num_classes = ops.shape(y_pred)[-1]
        if self.label_smoothing:
            labels = labels * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        hard = -ops.sum(labels * log_p, axis=-1)
        softened = ops.log_softmax(log_p / self.temperature, axis=-1)
        taught = (
            ops.sum(soft * (ops.log(ops.clip(soft, 1e-7, 1.0)) - softened), axis=-1) * self.temperature**2
        )
        return self.weight * taught + (1 - self.weight) * hard

    def get_config(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "weight": self.weight,
            "label_smoothing": self.label_smoothing,
        }


def accuracy(y_true: object, y_pred: object) -> object:
    """Accuracy against the labels, the first half of distillation targets."""
    labels = ops.split(y_true, 2, axis=-1)[0]
    return ops.cast(ops.argmax(labels, axis=-1) == ops.argmax(y_pred, axis=-1), "float32")
