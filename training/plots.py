"""A version's figures: learning curves (best epoch marked) and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt

from core.metadata import ReliabilityBin


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


def plot_reliability(
    before: list[ReliabilityBin], after: list[ReliabilityBin], subtitle: str, path: Path
) -> None:
    """Accuracy against confidence per bin, before and after calibration; the diagonal is perfect."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), dpi=80, sharey=True)
    for axis, bins, title in zip(
        axes, (before, after), ("before calibration", "after calibration"), strict=True
    ):
        filled = [b for b in bins if b.count and b.accuracy is not None and b.confidence is not None]
        total = sum(b.count for b in filled)
        ece = sum(b.count / total * abs(b.accuracy - b.confidence) for b in filled)  # type: ignore[operator]
        width = bins[0].upper - bins[0].lower
        axis.bar(
            [b.lower for b in filled],
            [b.accuracy for b in filled],
            width=width,
            align="edge",
            edgecolor="black",
            alpha=0.7,
            label="accuracy",
        )
        axis.plot(
            [b.confidence for b in filled],
            [b.accuracy for b in filled],
            "o",
            color="C3",
            label="mean confidence",
        )
        axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_title(f"{title}: ECE {ece:.4f}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    figure.suptitle(subtitle)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
