"""`python -m training train|republish|list|promote`: exit 0 on success, 1 with a one-line reason."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.datasets import DatasetError
from core.engines import quiet_tensorflow
from core.store import ModelStore, StoreError
from training.config import DEFAULT_RECIPE, RECIPES, TrainConfig, recipe

if TYPE_CHECKING:
    from core.datasets import Dataset
    from training.publish import TrainResult

DEFAULT_STORE = "models"
DEFAULT_NAME = "fashion-mnist"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        return int(args.command(args))
    except (ValueError, DatasetError, StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    # Every recipe flag's dest is its TrainConfig field; a flag left out keeps the recipe's value.
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    if "hidden_units" in given:
        given["hidden_units"] = tuple(given["hidden_units"])
    config = recipe(args.recipe, **given)
    store = ModelStore(args.store, args.name)
    # TensorFlow loads only for this command; list and promote stay instant.
    quiet_tensorflow(os.environ)
    from training.train import train_and_publish

    dataset = _dataset(args)
    if args.run_dir:
        result = train_and_publish(dataset, store, config, args.run_dir, args.promote)
    else:
        with tempfile.TemporaryDirectory(prefix="train-run-") as run_dir:
            result = train_and_publish(dataset, store, config, Path(run_dir), args.promote)
    _report(store, result)
    return 0


def _republish(args: argparse.Namespace) -> int:
    store = ModelStore(args.store, args.name)
    store.read_metadata(args.version)  # a missing version fails before TensorFlow loads
    quiet_tensorflow(os.environ)
    from training.publish import republish

    _report(store, republish(store, args.version, _dataset(args), args.promote))
    return 0


def _dataset(args: argparse.Namespace) -> Dataset:
    from core.datasets import load_fashion_mnist, load_image_folder

    dataset = load_image_folder(args.image_dir) if args.image_dir else load_fashion_mnist(args.data_dir)
    print(f"data: {dataset.source} ({len(dataset.train)} training images)", file=sys.stderr)
    return dataset


def _report(store: ModelStore, result: TrainResult) -> None:
    meta = result.metadata
    test = f", test accuracy {meta.test.accuracy:.4f}" if meta.test else ""
    accuracy = meta.validation.accuracy if meta.validation else float("nan")
    calibration = ""
    if meta.calibration:
        split = "test" if "test" in meta.calibration.after else "validation"
        before, after = meta.calibration.before[split].ece, meta.calibration.after[split].ece
        calibration = f", {split} ECE {before:.4f} -> {after:.4f} (T = {meta.calibration.temperature:.3f})"
    print(
        f"published {store.name} version {result.version}: validation accuracy {accuracy:.4f}{test}"
        f"{calibration}, best epoch {meta.best_epoch}/{meta.epochs_run}, {meta.training_seconds:.0f}s; "
        f"{'now current' if result.promoted else f'current stays {store.current_version()}'}"
    )


def _list(args: argparse.Namespace) -> int:
    summaries = ModelStore(args.store, args.name).version_summaries()
    if not summaries:
        print(f"no versions of {args.name} in {args.store}")
    for row in summaries:
        marker = "*" if row.promoted else " "
        if row.error is not None or row.created_at is None:
            print(f"{marker} {row.version:>4}  unreadable: {row.error}")
            continue
        val = f"{row.validation_accuracy:.4f}" if row.validation_accuracy is not None else "-"
        test = f"{row.test_accuracy:.4f}" if row.test_accuracy is not None else "-"
        print(f"{marker} {row.version:>4}  {row.created_at:%Y-%m-%d %H:%M}  val_acc {val}  test_acc {test}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    store = ModelStore(args.store, args.name)
    store.promote(args.version, reason="promoted by operator")
    print(f"{store.name} version {args.version} is now current")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and publish it as a new version")
    train.set_defaults(command=_train)
    _store_options(train)
    _data_options(train)
    train.add_argument(
        "--run-dir", type=Path, help="checkpoints and logs; re-run with the same one to resume"
    )
    train.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=DEFAULT_RECIPE,
        help="a named set of the options below (seed: the lecture's SGD; strong: distilled from a CNN)",
    )
    recipe_flag = _recipe_flag(train)
    recipe_flag("--epochs", type=int)
    recipe_flag("--max-train-samples", type=int)
    recipe_flag("--validation-size", type=int)
    recipe_flag("--hidden-units", type=int, nargs="+")
    recipe_flag("--activation")
    recipe_flag("--dropout", dest="dropout_rate", type=float)
    recipe_flag("--optimizer")
    recipe_flag("--learning-rate", type=float)
    recipe_flag("--lr-schedule")
    recipe_flag("--label-smoothing", type=float)
    recipe_flag(
        "--no-flip", dest="augment_flip", action="store_false", help="no horizontal-flip augmentation"
    )
    recipe_flag("--shift", dest="augment_shift", type=int, help="random shifts of up to N pixels")
    recipe_flag("--teacher-epochs", type=int, help="distil from a CNN teacher trained for N epochs (0: none)")
    recipe_flag("--distill-temperature", type=float)
    recipe_flag("--distill-weight", type=float, help="the soft targets' share of the loss")
    recipe_flag("--ema", dest="ema_momentum", type=float, help="weight averaging momentum (0: off)")
    recipe_flag("--batch-size", type=int)
    recipe_flag("--patience", type=int)
    recipe_flag("--seed", type=int)

    again = commands.add_parser(
        "republish",
        help="publish VERSION's weights again as a new version with calibration and an OOD detector",
    )
    again.set_defaults(command=_republish)
    _store_options(again)
    _data_options(again)
    again.add_argument("version", type=int)

    listing = commands.add_parser("list", help="list versions with metrics; * marks the current one")
    listing.set_defaults(command=_list)
    _store_options(listing)

    promote = commands.add_parser("promote", help="make VERSION current (rollback or pin)")
    promote.set_defaults(command=_promote)
    _store_options(promote)
    promote.add_argument("version", type=int)
    return parser


def _recipe_flag(parser: argparse.ArgumentParser) -> Callable[..., object]:
    """add_argument for a recipe option: absent means "the recipe's value", shown in the help."""
    defaults = RECIPES[DEFAULT_RECIPE]

    def add(flag: str, **kwargs: Any) -> object:
        dest = kwargs.setdefault("dest", flag.removeprefix("--").replace("-", "_"))
        if kwargs.get("action") == "store_false":
            kwargs["default"] = None
        else:
            kwargs.setdefault("help", "")
            kwargs["help"] += f" ({DEFAULT_RECIPE}: {getattr(defaults, dest)})"
        return parser.add_argument(flag, **kwargs)

    return add


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="folder with the four Fashion-MNIST IDX .gz files")
    parser.add_argument("--image-dir", type=Path, help="root/<class_name>/*.png|jpg instead")
    parser.add_argument("--promote", choices=["if-better", "always", "never"], default="if-better")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("MODEL_STORE", DEFAULT_STORE)))
    parser.add_argument("--name", default=os.environ.get("MODEL_NAME", DEFAULT_NAME))
