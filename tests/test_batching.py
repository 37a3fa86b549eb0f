"""Micro-batching: each caller gets its own rows; a full queue is 503 at once; a slow result is 504."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.engines import Engine, Outputs, load_engine
from core.store import ModelStore
from service.inference.batching import MicroBatcher
from service.inference.model import Inference, LoadedModel, load_version
from service.metrics import Metrics
from service.services import services_of
from tests.helpers import make_client, synthetic_images, wait_until


class GatedEngine:
    """The real engine, held at a gate so a test can decide when a batch finishes."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.started = threading.Event()
        self.gate = threading.Event()
        self.batches: list[int] = []

    def predict(self, batch: np.ndarray) -> Outputs:
        self.batches.append(len(batch))
        self.started.set()
        self.gate.wait(timeout=30)
        return self.inner.predict(batch)


def batcher_for(metrics: Metrics, *, max_queue_images: int, inline_max_images: int) -> MicroBatcher:
    return MicroBatcher(
        metrics,
        model="fashion-mnist",
        max_batch_images=64,
        max_queue_images=max_queue_images,
        timeout_s=10,
        inline_max_images=inline_max_images,
    )


@pytest.fixture
def model(tiny_store: Path) -> LoadedModel:
    return load_version(ModelStore(tiny_store, "fashion-mnist"), 1, "onnx", None)


def test_concurrent_requests_each_get_their_own_rows(model: LoadedModel) -> None:
    rng = np.random.default_rng(0)
    requests = [rng.uniform(0, 255, (int(rng.integers(1, 4)), 28, 28)).astype(np.float32) for _ in range(200)]
    metrics = Metrics()

    async def run() -> list[Inference]:
        batcher = batcher_for(metrics, max_queue_images=10_000, inline_max_images=16)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(model, images) for images in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    for images, result in zip(requests, results, strict=True):
        alone = model.infer(images)
        assert np.allclose(result.probabilities, alone.probabilities, atol=1e-6)
        assert result.ood_scores is not None and alone.ood_scores is not None
        assert np.allclose(result.ood_scores, alone.ood_scores, rtol=1e-4)
    calls = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in calls if s.name.endswith("_count"))
    total = next(s.value for s in calls if s.name.endswith("_sum"))
    assert total == sum(len(r) for r in requests)
    assert count < len(requests) / 4  # requests were coalesced into far fewer engine calls


def test_an_idle_engine_runs_a_lone_request_at_once(model: LoadedModel) -> None:
    async def run() -> float:
        batcher = batcher_for(Metrics(), max_queue_images=100, inline_max_images=16)
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.predict(model, np.zeros((1, 28, 28), np.float32))
        await batcher.stop()
        return loop.time() - started

    assert asyncio.run(run()) < 0.5  # no batching window: nothing waits for company


def test_different_versions_never_share_a_batch(model: LoadedModel) -> None:
    other = dataclasses.replace(model, version=2)

    async def run() -> list[Inference]:
        batcher = batcher_for(Metrics(), max_queue_images=100, inline_max_images=64)
        batcher.start()
        zeros = np.zeros((1, 28, 28), np.float32)
        try:
            return await asyncio.gather(batcher.predict(model, zeros), batcher.predict(other, zeros))
        finally:
            await batcher.stop()

    gated = GatedEngine(model.engine)
    gated.gate.set()
    model = dataclasses.replace(model, engine=gated)
    other = dataclasses.replace(other, engine=gated)
    asyncio.run(run())
    assert gated.batches == [1, 1]


def gated(store: Path, **overrides: object) -> Iterator[tuple[TestClient, GatedEngine]]:
    """A client whose engine runs in a thread and waits at a gate the test opens."""
    for client in make_client(store, inline_max_images=0, **overrides):
        manager = services_of(client.app).dataplane.managers["fashion-mnist"]
        engine = GatedEngine(manager.served.engine)
        manager.served = dataclasses.replace(manager.served, engine=engine)
        yield client, engine
        engine.gate.set()


@pytest.fixture
def gated_client(tiny_store: Path) -> Iterator[tuple[TestClient, GatedEngine]]:
    yield from gated(tiny_store, max_queue_images=2, request_timeout_s=1.0)


@pytest.fixture
def small_budget_client(tiny_store: Path) -> Iterator[tuple[TestClient, GatedEngine]]:
    yield from gated(tiny_store, max_inflight_body_bytes=2500)


def test_a_full_queue_is_503_with_retry_after_at_once(gated_client: tuple[TestClient, GatedEngine]) -> None:
    client, gated = gated_client
    one, two = {"instances": [[0] * 784]}, {"instances": [[0] * 784] * 2}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/predict", json=one)
        assert gated.started.wait(10)
        queued = pool.submit(client.post, "/predict", json=two)
        wait_until(lambda: 'model_queue_images{model="fashion-mnist"} 2.0' in client.get("/metrics").text)
        refused = client.post("/predict", json=one)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        gated.gate.set()
        assert running.result().status_code == 200
        assert queued.result().status_code == 200
    assert client.post("/predict", json=one).status_code == 200


def test_a_request_that_waits_too_long_is_504(gated_client: tuple[TestClient, GatedEngine]) -> None:
    client, gated = gated_client
    response = client.post("/predict", json={"instances": [[0] * 784]})
    assert (response.status_code, response.json()["error"]["code"]) == (504, "timeout")
    gated.gate.set()
    assert client.post("/predict", json={"instances": [[0] * 784]}).status_code == 200


def test_engine_choice_survives_a_round_trip(keras_store: Path) -> None:
    engine = load_engine(keras_store / "fashion-mnist" / "1", "keras")
    assert engine.kind == "keras"
    assert engine.predict(synthetic_images(np.array([3])).astype(np.float32)).probabilities.argmax() == 3


def test_bodies_beyond_the_memory_budget_are_refused_before_reading(
    small_budget_client: tuple[TestClient, GatedEngine],
) -> None:
    client, gated = small_budget_client
    body = {"instances": [[0] * 784]}  # about 1.6 kB: one fits the 2.5 kB budget, two do not
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/predict", json=body)
        assert gated.started.wait(10)
        refused = client.post("/predict", json=body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "overloaded")
        assert refused.headers["retry-after"] == "1"
        gated.gate.set()
        assert held.result().status_code == 200
    assert client.post("/predict", json=body).status_code == 200


def test_a_busy_model_does_not_hold_up_another(tiny_store: Path, tmp_path: Path) -> None:
    store = Path(shutil.copytree(tiny_store, tmp_path / "store"))
    shutil.copytree(store / "fashion-mnist", store / "other")
    for client, engine in gated(store, models="other", max_queue_images=100):
        one = {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]}
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(client.post, "/v2/models/fashion-mnist/infer", json=one)
            assert engine.started.wait(10)  # the default model's engine is held
            queued = pool.submit(client.post, "/v2/models/fashion-mnist/infer", json=one)
            other = client.post("/v2/models/other/infer", json=one)  # its own batcher and engine
            assert other.status_code == 200 and other.json()["model_name"] == "other"
            assert not busy.done() and not queued.done()
            engine.gate.set()
            assert busy.result().status_code == queued.result().status_code == 200
