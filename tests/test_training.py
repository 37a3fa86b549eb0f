"""The training CLI end to end: publish, policies, list, promote, and resuming a killed job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from core.engines import quiet_tensorflow
from core.store import (
    CURVES_FILE,
    HISTORY_FILE,
    METADATA_FILE,
    MODEL_FILE,
    ONNX_FILE,
    OOD_FILE,
    PROBE_FILE,
    RELIABILITY_FILE,
    ModelStore,
)
from tests.helpers import REPO, cli, wait_until

pytestmark = pytest.mark.slow


def train(store: Path, data: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(
        "train",
        "--store",
        store,
        "--data-dir",
        data,
        "--epochs",
        "2",
        "--max-train-samples",
        "300",
        "--validation-size",
        "100",
        "--batch-size",
        "32",
        "--hidden-units",
        "16",
        "--no-flip",
        *extra,
    )


def test_train_publishes_version_one_and_makes_it_current(tmp_path: Path, synthetic_data_dir: Path) -> None:
    result = train(tmp_path, synthetic_data_dir)
    assert "published fashion-mnist version 1" in result.stdout and "now current" in result.stdout
    assert "epoch 2/2" in result.stderr and "ETA" in result.stderr
    version = tmp_path / "fashion-mnist" / "1"
    for name in (MODEL_FILE, ONNX_FILE, PROBE_FILE, OOD_FILE, METADATA_FILE, HISTORY_FILE, CURVES_FILE):
        assert (version / name).stat().st_size > 0, name
    assert (version / RELIABILITY_FILE).read_bytes().startswith(b"\x89PNG")
    meta = ModelStore(tmp_path, "fashion-mnist").read_metadata(1)
    assert (meta.epochs_run, meta.training["train_samples"], meta.training["hidden_units"]) == (2, 300, [16])
    assert meta.test is not None and set(meta.test.per_class) == set(meta.class_names)
    assert meta.datasets and meta.framework["keras"].startswith("3.")
    assert ModelStore(tmp_path, "fashion-mnist").current_version() == 1
    # Calibrated on validation, reported on both splits; the OOD detector's threshold leaves 95 % of
    # validation unflagged.
    assert meta.calibration is not None and meta.calibration.temperature > 0
    assert set(meta.calibration.before) == set(meta.calibration.after) == {"validation", "test"}
    assert meta.calibration.after["test"].accuracy == meta.calibration.before["test"].accuracy
    assert meta.calibration.after["validation"].nll <= meta.calibration.before["validation"].nll
    assert meta.ood is not None and meta.ood.flagged["validation"] == pytest.approx(0.05, abs=0.011)
    assert (
        "ECE" in result.stdout
        and meta.test is not None
        and meta.test.ece == pytest.approx(meta.calibration.after["test"].ece)
    )


SERVED_LAYERS = {"InputLayer", "Rescaling", "Flatten", "Dense", "Dropout", "BatchNormalization", "Identity"}
ONNX_OPS = {"MatMul", "Gemm", "Add", "Mul", "Relu", "Softmax", "Reshape", "Flatten", "Identity"}


def test_the_strong_recipe_trains_a_teacher_and_publishes_a_pure_mlp(
    tmp_path: Path, synthetic_data_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    short = ("--recipe", "strong", "--teacher-epochs", "2", "--run-dir", run_dir)
    result = train(tmp_path, synthetic_data_dir, *short)
    assert "teacher epoch 2/2" in result.stderr and "published fashion-mnist version 1" in result.stdout
    meta = ModelStore(tmp_path, "fashion-mnist").read_metadata(1)
    assert meta.training["recipe"] == "strong" and meta.training["teacher_epochs"] == 2
    assert meta.training["ema_momentum"] > 0 and 0 < meta.training["teacher_validation_accuracy"] <= 1
    # The teacher taught the MLP and stays in the run folder: what is served has no convolution.
    version = tmp_path / "fashion-mnist" / "1"
    with zipfile.ZipFile(version / MODEL_FILE) as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    assert {layer["class_name"] for layer in layers} <= SERVED_LAYERS
    assert {node.op_type for node in onnx.load(version / ONNX_FILE).graph.node} <= ONNX_OPS

    # The same run folder again: the finished teacher is reused, not trained again (and with shifts it
    # scores each batch as drawn instead of the epoch's images once).
    again = train(tmp_path, synthetic_data_dir, *short, "--shift", "1")
    assert "teacher epoch" not in again.stderr and "published fashion-mnist version 2" in again.stdout


def test_recipes_are_named_presets_that_flags_override() -> None:
    from training.config import RECIPES, recipe

    assert recipe("seed").optimizer == "sgd" and recipe("seed").epochs == 30
    assert recipe("standard") == RECIPES["standard"] and recipe("standard").teacher_epochs == 0
    assert recipe("strong", epochs=3).epochs == 3 and recipe("strong", epochs=3).teacher_epochs > 0
    with pytest.raises(ValueError, match=r"recipe must be one of \('seed', 'standard', 'strong'\)"):
        recipe("best")
    with pytest.raises(ValueError, match="augment_shift must be in \\[0, 4\\] pixels, received 9"):
        recipe("strong", augment_shift=9)


def test_random_shifts_move_each_image_by_at_most_the_bound_filling_zeros() -> None:
    import tensorflow as tf

    from training.augment import random_shift

    images = np.zeros((64, 28, 28), dtype=np.float32)
    images[:, 10:18, 9:19] = np.arange(80, dtype=np.float32).reshape(8, 10) + 1
    shifted = random_shift(tf.constant(images), 2).numpy()
    offsets = set()
    for original, moved in zip(images, shifted, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(np.roll(original, (dy, dx), axis=(0, 1)), moved)
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # each image draws its own offset


def test_distillation_loss_mixes_the_teacher_and_the_labels() -> None:
    from training.model import DistillationLoss

    labels = np.eye(3, dtype=np.float32)[[0, 1]]
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    student = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], dtype=np.float32)
    targets = np.concatenate([labels, teacher], axis=1)
    hard = -np.log(student[[0, 1], [0, 1]]).mean()
    assert float(DistillationLoss(3.0, 0.0)(targets, student)) == pytest.approx(hard, rel=1e-5)
    # At T = 1 the soft part is KL(teacher || student).
    kl = (teacher * np.log(teacher / student)).sum(axis=1).mean()
    assert float(DistillationLoss(1.0, 1.0)(targets, student)) == pytest.approx(kl, rel=1e-4)
    # The targets hold the teacher softened at T: a student that, softened alike, matches them costs nothing.
    softened = np.exp(np.log(student) / 3)
    softened /= softened.sum(axis=1, keepdims=True)
    matched = np.concatenate([labels, softened], axis=1)
    assert float(DistillationLoss(3.0, 1.0)(matched, student)) == pytest.approx(0.0, abs=1e-5)


def test_republish_gives_an_old_version_calibration_and_a_detector(
    tmp_path: Path, synthetic_data_dir: Path
) -> None:
    train(tmp_path, synthetic_data_dir)
    store = ModelStore(tmp_path, "fashion-mnist")
    old = store.version_dir(1)
    for name in (OOD_FILE, RELIABILITY_FILE):  # as published before issue 9
        (old / name).unlink()
    result = cli(
        "republish", "1", "--store", tmp_path, "--data-dir", synthetic_data_dir, "--promote", "never"
    )
    assert "published fashion-mnist version 2" in result.stdout and "current stays 1" in result.stdout
    republished = store.read_metadata(2)
    source = store.read_metadata(1)
    assert republished.derived_from == 1 and republished.ood is not None
    assert (republished.epochs_run, republished.training) == (source.epochs_run, source.training)
    assert (store.version_dir(2) / OOD_FILE).is_file() and (store.version_dir(2) / HISTORY_FILE).is_file()
    assert republished.test is not None and source.test is not None
    assert republished.test.accuracy == source.test.accuracy  # the same weights: the same classes


def test_policies_list_and_rollback(tmp_path: Path, synthetic_data_dir: Path) -> None:
    train(tmp_path, synthetic_data_dir)
    result = train(tmp_path, synthetic_data_dir, "--promote", "never")
    assert "published fashion-mnist version 2" in result.stdout and "current stays 1" in result.stdout
    train(tmp_path, synthetic_data_dir, "--promote", "always")
    listing = cli("list", "--store", tmp_path).stdout.splitlines()
    assert [line[:6] for line in listing] == ["     1", "     2", "*    3"]
    cli("promote", "1", "--store", tmp_path)
    assert ModelStore(tmp_path, "fashion-mnist").current_version() == 1


def test_failures_exit_non_zero_with_a_one_line_reason(tmp_path: Path) -> None:
    missing = cli("promote", "4", "--store", tmp_path, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == ["error: model 'fashion-mnist' has no version 4"]
    bad = cli("train", "--store", tmp_path, "--data-dir", tmp_path, "--dropout", "1.5", check=False)
    assert (bad.returncode, bad.stderr.strip()) == (1, "error: dropout_rate must be in [0, 1), received 1.5")
    negative = cli(
        "train", "--store", tmp_path, "--data-dir", tmp_path, "--teacher-epochs", "-1", check=False
    )
    assert negative.stderr.strip() == "error: teacher_epochs must be >= 0, received -1"
    no_data = cli("train", "--store", tmp_path, "--data-dir", tmp_path, check=False)
    assert no_data.returncode == 1 and "missing train-images-idx3-ubyte.gz" in no_data.stderr


def test_a_killed_job_resumes_from_its_last_epoch(tmp_path: Path, synthetic_data_dir: Path) -> None:
    run_dir, store = tmp_path / "run", tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "training",
        "train",
        "--store",
        str(store),
        "--data-dir",
        str(synthetic_data_dir),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "40",
        "--patience",
        "40",
        "--max-train-samples",
        "300",
        "--validation-size",
        "100",
        "--batch-size",
        "16",
        "--hidden-units",
        "16",
        "--no-flip",
    ]
    env = quiet_tensorflow(dict(os.environ))
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run_dir / HISTORY_FILE
    try:
        wait_until(lambda: history.exists() and len(history.read_text().splitlines()) >= 4, timeout_s=120)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    done_before_kill = len(history.read_text().splitlines()) - 1
    assert done_before_kill < 40 and ModelStore(store, "fashion-mnist").versions() == []

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first_epoch_line = next(line for line in resumed.stderr.splitlines() if line.startswith("epoch "))
    assert int(first_epoch_line.split()[1].split("/")[0]) > 1  # it did not start over
    with history.open() as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle) if row["epoch"] != "epoch"]
    assert sorted(set(epochs)) == list(range(40))
    assert ModelStore(store, "fashion-mnist").read_metadata(1).epochs_run == 40


def test_if_better_does_not_promote_a_version_the_serving_image_cannot_run(tmp_path: Path) -> None:
    # A version whose ONNX export failed has only model.keras, which the serving image (no TensorFlow)
    # refuses: `if-better` leaves it unpromoted, `always` still promotes it.
    from datetime import UTC, datetime

    from core.metadata import EvaluationMetrics, ModelMetadata
    from training.publish import apply_policy

    store = ModelStore(tmp_path, "clf")
    with store.staging() as staging:
        (staging / "model.keras").write_text("weights")
        meta = ModelMetadata(
            name="clf",
            created_at=datetime.now(UTC),
            class_names=["a", "b"],
            validation=EvaluationMetrics(count=10, loss=0.5, accuracy=0.9, per_class={}),
            artifacts=["model.keras"],
        )
        version = store.publish(staging, meta)
    assert apply_policy(store, version, "if-better") is False and store.current_version() is None
    assert apply_policy(store, version, "always") is True and store.current_version() == version
