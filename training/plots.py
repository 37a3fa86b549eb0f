"""Learning curves: loss and accuracy, train vs validation, with the best epoch marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt


def plot_learning_curves(history: dict[str, list[float]], best_epoch: int, path: Path) -> None:
    epochs = [int(e) + 1 for e in history["epoch"]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history[metric], label="train")
        axis.plot(epochs, history[f"val_{metric}"], label="validation")
        axis.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
