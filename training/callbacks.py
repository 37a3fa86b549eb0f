"""Progress output for training jobs: one line per epoch with metrics and an ETA."""

from __future__ import annotations

import sys
import time
from typing import Any

import keras


class EpochProgress(keras.callbacks.Callback):
    """Prints `epoch 3/40  loss 0.41  accuracy 0.86  val_loss ...  2.1s/epoch  ETA 1m20s` per epoch."""

    def __init__(self, total_epochs: int, prefix: str = "") -> None:
        super().__init__()
        self.total_epochs = total_epochs
        self.prefix = prefix
        self._started = 0.0
        self._epochs_timed = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()
        self._epochs_timed = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_timed += 1
        per_epoch = (time.monotonic() - self._started) / self._epochs_timed
        remaining = per_epoch * (self.total_epochs - epoch - 1)
        metrics = "  ".join(
            f"{key} {value:.4f}" for key, value in (logs or {}).items() if key != "learning_rate"
        )
        eta = _duration(remaining)
        print(
            f"{self.prefix}epoch {epoch + 1}/{self.total_epochs}  {metrics}  "
            f"{per_epoch:.1f}s/epoch  ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
