"""The training CLI end to end: publish, policies, list, promote, and resuming a killed job."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

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
