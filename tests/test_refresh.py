"""The service follows the store's current version, and refuses versions that fail verification."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.store import METADATA_FILE, ONNX_FILE, ModelStore
from tests.helpers import make_client, republish, wait_until

KEY = "admin-key"


def served(client: TestClient) -> int:
    response = client.post("/predict", json={"instances": [[0] * 784]}, headers={"X-API-Key": KEY})
    return int(response.json()["model"]["version"])


def reloads(client: TestClient, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'model_reloads_total{{model="fashion-mnist",outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def live(store_copy: Path) -> Iterator[TestClient]:
    yield from make_client(store_copy, poll_interval_s=0.05, api_key=KEY)


def test_a_promoted_version_is_picked_up_within_the_poll_interval(live: TestClient, store_copy: Path) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    store.promote(republish(store_copy))
    wait_until(lambda: served(live) == 2, timeout_s=10)
    store.promote(1, reason="rollback")
    wait_until(lambda: served(live) == 1, timeout_s=10)
    assert live.get("/health/ready").json()["model"]["version"] == 1


@pytest.mark.parametrize(
    ("corruption", "metadata"),
    [
        (ONNX_FILE, {}),  # never replaced by the Keras model beside it
        ("model.keras", {"artifacts": []}),
        ("probe.npz", {}),
        (METADATA_FILE, {}),
        (None, {"class_names": [f"c{i}" for i in range(10)]}),
    ],
    ids=["bad-onnx", "bad-keras", "bad-probe", "bad-metadata", "other-classes"],
)
def test_a_version_that_fails_verification_is_never_served(
    live: TestClient, store_copy: Path, corruption: str | None, metadata: dict[str, Any]
) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    version = republish(store_copy, corrupt=corruption if corruption != METADATA_FILE else None, **metadata)
    if corruption == "model.keras":
        (store.version_dir(version) / ONNX_FILE).unlink()  # nothing left but the broken Keras file
    if corruption == METADATA_FILE:
        (store.version_dir(version) / METADATA_FILE).write_text("{}")
    failures = reloads(live, "failure")
    # Promotion checks only that metadata reads; the corrupt metadata case is pointed at by hand.
    if corruption == METADATA_FILE:
        (store_copy / "fashion-mnist" / "current.json").write_text(
            f'{{"version": {version}, "promoted_at": "2026-01-01T00:00:00Z"}}'
        )
    else:
        store.promote(version)
    wait_until(lambda: reloads(live, "failure") > failures, timeout_s=10)
    assert served(live) == 1
    assert live.get("/health/ready").status_code == 200
    # A later good version is still picked up.
    store.promote(republish(store_copy))
    wait_until(lambda: served(live) == version + 1, timeout_s=10)


def test_a_pinned_version_is_served_whatever_is_current(store_copy: Path) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    store.promote(republish(store_copy))
    for client in make_client(store_copy, model_version=1, poll_interval_s=0.05):
        assert served(client) == 1


def test_admin_reload_swaps_at_once_and_versions_lists_the_store(store_copy: Path) -> None:
    for client in make_client(store_copy, poll_interval_s=3600, api_key=KEY):
        store = ModelStore(store_copy, "fashion-mnist")
        store.promote(republish(store_copy))
        headers = {"X-API-Key": KEY}
        response = client.post("/admin/reload", headers=headers).json()
        assert response == {"served_version": 2, "changed": True, "error": None}
        assert served(client) == 2
        listing = client.get("/admin/versions", headers=headers).json()
        assert (listing["current"], listing["served"]) == (2, 2)
        assert [(v["version"], v["served"]) for v in listing["versions"]] == [(1, False), (2, True)]
        assert listing["versions"][0]["validation_accuracy"] > 0.9


# ---- hardening review findings 11, 14 and 15 ----


def retries(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('model_reload_retries_total{model="fashion-mnist"} '):
            return float(line.split()[-1])
    return 0.0


def test_a_failed_version_is_tried_again_when_its_files_change(live: TestClient, store_copy: Path) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    version = republish(store_copy, corrupt="probe.npz")
    failures = reloads(live, "failure")
    store.promote(version)
    wait_until(lambda: reloads(live, "failure") > failures, timeout_s=10)
    # The operator repairs the file in place: no reload needed, the change is noticed.
    shutil.copy(store.version_dir(1) / "probe.npz", store.version_dir(version) / "probe.npz")
    wait_until(lambda: served(live) == version, timeout_s=10)


def test_an_unchanged_failed_version_is_retried_with_backoff(live: TestClient, store_copy: Path) -> None:
    # A failure that may be transient (here: permanent, other classes) is retried after RETRY_POLLS
    # poll intervals, then twice as long each time; the old version serves all along.
    store = ModelStore(store_copy, "fashion-mnist")
    store.promote(republish(store_copy, class_names=[f"c{i}" for i in range(10)]))
    wait_until(lambda: retries(live) >= 2, timeout_s=10)
    assert served(live) == 1 and reloads(live, "failure") >= 3


def test_a_version_the_watcher_refused_is_refused_by_number_with_its_reason(
    live: TestClient, store_copy: Path
) -> None:
    # One memory of failed versions: asked for by number, it answers from the watcher's failure
    # (within the backoff, without loading the version again), whichever protocol asks.
    store = ModelStore(store_copy, "fashion-mnist")
    version = republish(store_copy, class_names=[f"c{i}" for i in range(10)])
    failures = reloads(live, "failure")
    store.promote(version)
    wait_until(lambda: reloads(live, "failure") > failures, timeout_s=10)
    store.promote(1, reason="rollback")
    for path in (
        f"/v2/models/fashion-mnist/versions/{version}",
        f"/v1/models/fashion-mnist/versions/{version}",
    ):
        response = live.get(path)
        assert response.status_code == 404 and "has classes ['c0'" in response.json()["error"]


def test_a_version_number_beyond_64_bits_is_refused_and_logged(
    live: TestClient, store_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.logs import JsonFormatter

    failures = reloads(live, "failure")
    (store_copy / "fashion-mnist" / "current.json").write_text(
        f'{{"version": {2**64 + 1}, "promoted_at": "2026-01-01T00:00:00Z"}}'
    )
    wait_until(lambda: reloads(live, "failure") > failures, timeout_s=10)
    assert served(live) == 1
    records = [r for r in caplog.records if r.getMessage() == "version not served"]
    assert records and all(json.loads(JsonFormatter().format(r))["level"] == "error" for r in records)


def test_model_reports_the_folder_it_serves(live: TestClient, store_copy: Path) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    version = republish(store_copy)
    path = store.version_dir(version) / METADATA_FILE
    path.write_text(path.read_text().replace(f'"version": {version}', '"version": 7'))  # a hand-edited file
    store.promote(version)
    wait_until(lambda: served(live) == version, timeout_s=10)
    assert live.get("/model").json()["version"] == version


def test_a_store_call_cancelled_as_it_finishes_is_still_cancelled(store_copy: Path) -> None:
    """Shutdown cancels the store watcher; if its store call finished in the same instant, the
    cancellation must still stop it (asyncio.wait_for in Python 3.11 returned the result instead, and
    the watcher polled on while shutdown waited for it)."""
    import asyncio
    import threading
    import time

    from service.inference.versions import ModelManager
    from service.metrics import Metrics
    from service.settings import Settings

    manager = ModelManager(Settings(model_store=store_copy), Metrics())
    release = threading.Event()

    async def scenario() -> None:
        call = asyncio.create_task(manager.run_io(release.wait))
        await asyncio.sleep(0.05)  # the store thread is waiting
        release.set()
        time.sleep(0.2)  # the loop is busy while the store call finishes and queues its result
        call.cancel()  # the cancellation arrives in the same loop pass as the result
        with pytest.raises(asyncio.CancelledError):
            await call

    try:
        asyncio.run(scenario())
    finally:
        manager.close()


# ---- second hardening round (issue 21, items 2, 6 and 7): a broken store cannot stop the watcher ----


def truncate(path: Path) -> None:
    """What a publish killed mid-write (or a full disk) leaves: the start of a zip file."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_means(path: Path) -> None:
    arrays = dict(np.load(path))
    arrays["means"] = np.full_like(arrays["means"], np.nan)
    with path.open("wb") as file:
        np.savez(file, **arrays)


def without_onnx_or_keras(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving image (no TensorFlow) meets a version published without model.onnx."""
    path.unlink()
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ModuleNotFoundError


@pytest.mark.parametrize(
    ("file", "damage"),
    [("probe.npz", truncate), ("ood.npz", truncate), ("ood.npz", nan_means), (ONNX_FILE, None)],
    ids=["truncated-probe", "truncated-ood", "nan-ood-means", "no-onnx-no-keras"],
)
def test_a_version_that_fails_in_any_way_is_refused_and_a_later_good_one_still_serves(
    live: TestClient, store_copy: Path, monkeypatch: pytest.MonkeyPatch, file: str, damage: Any
) -> None:
    store = ModelStore(store_copy, "fashion-mnist")
    version = republish(store_copy)
    path = store.version_dir(version) / file
    if damage is None:
        without_onnx_or_keras(path, monkeypatch)
    else:
        damage(path)
    failures = reloads(live, "failure")
    store.promote(version)
    wait_until(lambda: reloads(live, "failure") > failures, timeout_s=10)
    assert served(live) == 1 and live.get("/health/ready").status_code == 200
    # Asked for by number it is a 404 with the reason, in every protocol, and stays one.
    for _ in range(2):
        by_number = live.get(f"/v1/models/fashion-mnist/versions/{version}", headers={"X-API-Key": KEY})
        assert by_number.status_code == 404 and "cannot be served" in by_number.json()["error"]
    # The watcher is alive: a good version promoted after it is served.
    store.promote(republish(store_copy))
    wait_until(lambda: served(live) == version + 1, timeout_s=10)


def test_a_watch_pass_that_fails_unexpectedly_is_logged_and_the_watch_goes_on(
    live: TestClient, store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.inference.versions import ModelManager

    original, calls = ModelManager.reload, []

    async def flaky(self: ModelManager, *, force: bool = False) -> Any:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("a defect in a pass")
        return await original(self, force=force)

    monkeypatch.setattr(ModelManager, "reload", flaky)
    failures = reloads(live, "failure")
    store = ModelStore(store_copy, "fashion-mnist")
    store.promote(republish(store_copy))
    wait_until(lambda: served(live) == 2, timeout_s=10)
    assert reloads(live, "failure") >= failures + 3


def test_a_watcher_that_ends_is_restarted_and_readiness_says_so_meanwhile(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from service.inference import dataplane
    from service.inference.versions import ModelManager

    monkeypatch.setattr(dataplane, "WATCH_RESTART_S", 0.5)
    original, ended = ModelManager.watch, asyncio.Event()

    async def watch_once_then_die(self: ModelManager, interval_s: float) -> None:
        if not ended.is_set():
            await self.reload()
            ended.set()
            raise RuntimeError("the watcher died")
        await original(self, interval_s)

    monkeypatch.setattr(ModelManager, "watch", watch_once_then_die)
    from service.app import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(model_store=store_copy, poll_interval_s=0.05))) as client:
        wait_until(lambda: ended.is_set())
        statuses = []
        wait_until(lambda: statuses.append(client.get("/health/ready").status_code) or statuses[-1] == 200)
        assert 503 in statuses  # not ready while the watcher was down, ready once it runs again
        restarts = [
            line
            for line in client.get("/metrics").text.splitlines()
            if line.startswith('model_watcher_restarts_total{model="fashion-mnist"}')
        ]
        assert restarts and float(restarts[0].split()[-1]) == 1
        ModelStore(store_copy, "fashion-mnist").promote(republish(store_copy))
        wait_until(lambda: served(client) == 2, timeout_s=10)


def test_a_failed_repository_load_leaves_nothing_registered(store_copy: Path) -> None:
    (store_copy / "unpromoted").mkdir()  # a model folder with no version promoted
    for client in make_client(store_copy, api_key=KEY):
        load = client.post("/v2/repository/models/unpromoted/load", headers={"X-API-Key": KEY})
        assert load.status_code == 503
        assert client.get("/health/ready").status_code == 200
        assert "unpromoted" not in {row["name"] for row in client.get("/models").json()["models"]}
