from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import pytest

from core.metadata import EvaluationMetrics, ModelMetadata
from core.store import METADATA_FILE, ModelStore, StoreError, VersionNotFound


def metadata(validation_accuracy: float) -> ModelMetadata:
    return ModelMetadata(
        name="ignored",
        created_at=datetime.now(UTC),
        class_names=["a", "b"],
        validation=EvaluationMetrics(count=10, loss=0.5, accuracy=validation_accuracy, per_class={}),
    )


def publish(store: ModelStore, validation_accuracy: float = 0.5, payload: str = "weights") -> int:
    with store.staging() as staging:
        (staging / "model.keras").write_text(payload)
        return store.publish(staging, metadata(validation_accuracy))


def test_versions_are_numbered_from_one_and_stamped_in_metadata(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    assert (publish(store), publish(store)) == (1, 2)
    assert store.versions() == [1, 2]
    meta = store.read_metadata(2)
    assert (meta.name, meta.version) == ("clf", 2)
    assert (tmp_path / "clf" / "2" / "model.keras").read_text() == "weights"


def test_nothing_is_current_until_promoted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    publish(store)
    assert store.current_version() is None
    store.promote(1)
    assert store.current_version() == 1


def test_promote_if_better_compares_validation_accuracy(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    assert store.promote_if_better(publish(store, 0.80)) is True
    assert store.promote_if_better(publish(store, 0.79)) is False
    assert store.current_version() == 1
    assert store.promote_if_better(publish(store, 0.80)) is True  # equal counts as good enough
    assert store.current_version() == 3


def test_rollback_promotes_an_older_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    publish(store, 0.7)
    publish(store, 0.9)
    store.promote(2)
    store.promote(1, reason="rollback")
    pointer = store.current()
    assert pointer is not None and (pointer.version, pointer.reason) == (1, "rollback")


def test_promoting_a_missing_version_fails_and_changes_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    store.promote(publish(store))
    with pytest.raises(VersionNotFound, match="no version 7"):
        store.promote(7)
    assert store.current_version() == 1


def test_a_failed_write_leaves_no_version_and_no_staging_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    with pytest.raises(RuntimeError), store.staging() as staging:
        (staging / "model.keras").write_text("half")
        raise RuntimeError("killed mid-way")
    assert store.versions() == []
    assert [p.name for p in (tmp_path / "clf").iterdir()] == [".lock"]  # the writers' lock, empty


def test_staging_directories_are_invisible_to_readers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    with store.staging() as staging:
        (staging / "model.keras").write_text("x")
        assert store.versions() == []
        store.publish(staging, metadata(0.5))
    assert store.versions() == [1]


def test_unreadable_metadata_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    publish(store)
    (tmp_path / "clf" / "1" / METADATA_FILE).write_text("{not json")
    with pytest.raises(StoreError, match=r"version 1 of 'clf': unreadable metadata\.json"):
        store.read_metadata(1)


def test_current_pointer_is_plain_json(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    store.promote(publish(store))
    assert json.loads((tmp_path / "clf" / "current.json").read_text())["version"] == 1


def test_model_names_must_be_plain_directory_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"received '\.\./x'"):
        ModelStore(tmp_path, "../x")


def _publish_many(root: str, count: int) -> list[int]:
    store = ModelStore(root, "clf")
    return [publish(store, payload=f"{i}") for i in range(count)]


def test_staging_left_by_a_killed_job_is_removed_by_the_next_one_and_a_live_one_is_kept(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path, "clf")
    context = multiprocessing.get_context("spawn")
    staged = context.Event()
    killed = context.Process(target=_stage_and_wait, args=(str(tmp_path), staged))
    killed.start()
    assert staged.wait(timeout=60)
    os.kill(killed.pid, signal.SIGKILL)  # type: ignore[arg-type]
    killed.join()
    (tmp_path / "clf" / ".current.json.0123abcd").write_text('{"vers')  # a promotion killed mid-write
    with store.staging() as live:  # another job, still writing
        (live / "model.keras").write_text("in progress")
        assert publish(store) == 1
        left = sorted(p.name for p in (tmp_path / "clf").iterdir())
        assert left == [".lock", live.name, "1"]  # the killed job's staging and half pointer are gone
        assert (live / "model.keras").read_text() == "in progress"


def test_a_fifo_or_symlink_in_place_of_a_writer_lock_blocks_no_publish(tmp_path: Path) -> None:
    # A broken job's leftovers: opening a FIFO to test its lock would wait for a writer forever.
    store = ModelStore(tmp_path, "clf")
    publish(store)
    for name, make in (("fifo", os.mkfifo), ("link", lambda path: path.symlink_to("/etc/hostname"))):
        folder = tmp_path / "clf" / f".staging-{name}"
        folder.mkdir()
        make(folder / ".writer")
    done = threading.Event()
    worker = threading.Thread(target=lambda: (publish(store), done.set()), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert done.is_set(), "publish waited on the FIFO"
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == [".lock", "1", "2"]


def _stage_and_wait(root: str, staged: EventType) -> None:
    with ModelStore(root, "clf").staging() as staging:
        (staging / "model.keras").write_text("half")
        staged.set()
        time.sleep(60)


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(_publish_many, [(str(tmp_path), 5)] * 4)
    numbers = sorted(n for result in results for n in result)
    assert numbers == list(range(1, 21))
    assert ModelStore(tmp_path, "clf").versions() == list(range(1, 21))


def test_only_plain_version_numbers_are_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "clf")
    publish(store)
    for name in ("0", "01", "1000000000", "99999999999999999999", "\u00b2", "\u0663"):
        (store.directory / name).mkdir()
    assert store.versions() == [1]
    with pytest.raises(VersionNotFound):
        store.version_dir(2**64)


@pytest.mark.parametrize("version", [0, -1, 2**63, 2**64 + 1])
def test_a_current_pointer_outside_the_version_range_is_a_store_error(tmp_path: Path, version: int) -> None:
    store = ModelStore(tmp_path, "clf")
    publish(store)
    (store.directory / "current.json").write_text(
        json.dumps({"version": version, "promoted_at": "2026-01-01T00:00:00Z"})
    )
    with pytest.raises(StoreError, match=r"unreadable current\.json"):
        store.current_version()


def test_store_files_that_are_not_regular_or_too_large_are_refused_at_once(tmp_path: Path) -> None:
    import os

    store = ModelStore(tmp_path, "clf")
    store.promote(publish(store))
    pointer = store.directory / "current.json"
    pointer.unlink()
    os.mkfifo(pointer)  # a plain open() would wait for a writer forever
    with pytest.raises(StoreError, match="not a regular file"):
        store.current_version()
    pointer.unlink()
    pointer.write_text(" " * 100_000 + '{"version": 1, "promoted_at": "2026-01-01T00:00:00Z"}')
    with pytest.raises(StoreError, match="more than 65536"):
        store.current_version()
