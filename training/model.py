"""The classifier: build (architecture, pixel scaling inside) and compile (optimizer, loss) separately."""

from __future__ import annotations

import keras

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
    """Labels are one-hot so that label smoothing applies."""
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, steps_per_epoch * config.epochs)
        )
    model.compile(
        optimizer=_OPTIMIZERS[config.optimizer](learning_rate=learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
