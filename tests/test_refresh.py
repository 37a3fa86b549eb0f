"""The service follows the store's current version, and refuses versions that fail verification."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    from service.config import Settings
    from service.loader import ModelManager
    from service.metrics import Metrics

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
