"""Evaluate, health, model metadata, versions and figures, metrics and their summary, authentication and
request ids."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bench.attacks import running_service
from core.datasets import load_fashion_mnist
from tests.helpers import image_bytes, make_client, synthetic_images

KEY = "s3cret-key"


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def test_evaluate_reports_loss_accuracy_per_class_and_confusion(client: TestClient) -> None:
    labels = np.arange(20) % 10
    response = client.post(
        "/evaluate", json={"instances": synthetic_images(labels).tolist(), "labels": labels.tolist()}
    )
    body = response.json()
    assert response.status_code == 200
    assert (body["count"], body["accuracy"], body["model"]["version"]) == (20, 1.0, 1)
    assert body["loss"] > 0
    assert body["per_class"]["Trouser"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert np.array_equal(np.array(body["confusion_matrix"]), 2 * np.eye(10))
    # Calibration: ECE over 15 confidence bins, all 20 predictions in them; none flagged OOD here.
    assert len(body["reliability"]) == 15 and sum(b["count"] for b in body["reliability"]) == 20
    confident = [b for b in body["reliability"] if b["count"]]
    expected_ece = sum(b["count"] / 20 * abs(b["confidence"] - b["accuracy"]) for b in confident)
    assert body["ece"] == pytest.approx(expected_ece)
    assert body["ood_flagged"] == 0.0


def test_evaluate_counts_mistakes(client: TestClient) -> None:
    labels = np.array([0, 1, 2, 3])
    wrong = [1, 1, 2, 3]  # the first image is labelled as the wrong class
    body = client.post(
        "/evaluate", json={"instances": synthetic_images(labels).tolist(), "labels": wrong}
    ).json()
    assert body["accuracy"] == 0.75
    assert body["confusion_matrix"][1][0] == 1
    assert body["per_class"]["Trouser"]["recall"] == 0.5


def test_evaluate_accepts_image_files_with_named_labels(client: TestClient) -> None:
    pictures = synthetic_images(np.array([8, 9]))
    files = [("files", (f"{i}.png", image_bytes(p), "image/png")) for i, p in enumerate(pictures)]
    response = client.post("/evaluate", files=files, data={"labels": "Bag, Ankle boot"})
    assert (response.status_code, response.json()["accuracy"]) == (200, 1.0)


def test_evaluate_on_the_named_test_set(tiny_store: Path, synthetic_data_dir: Path) -> None:
    for client in make_client(tiny_store, fashion_mnist_dir=synthetic_data_dir):
        body = client.post("/evaluate", json={"dataset": "test", "limit": 50}).json()
        test = load_fashion_mnist(synthetic_data_dir).test
        assert test is not None
        assert body["count"] == 50 and sum(map(sum, body["confusion_matrix"])) == 50


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"instances": [[0] * 784]}, 422, "missing_labels"),
        ({"instances": [[0] * 784], "labels": [10]}, 422, "invalid_labels"),
        ({"instances": [[0] * 784], "labels": ["Sock"]}, 422, "invalid_labels"),
        ({"instances": [[0] * 784], "labels": [True]}, 422, "invalid_labels"),
        ({"instances": [[0] * 784], "labels": [1, 2]}, 422, "invalid_labels"),
        ({"labels": [1]}, 422, "missing_instances"),
        ({"dataset": "train"}, 422, "invalid_dataset"),
        ({"dataset": "test", "limit": -1}, 422, "invalid_request"),
        # The review's 500s (finding 6): a broken JSON label list, a digit int() refuses, too many digits.
        ({"instances": [[0] * 784], "labels": "[1,"}, 422, "invalid_labels"),
        ({"instances": [[0] * 784], "labels": "\u00b2"}, 422, "invalid_labels"),
        ({"instances": [[0] * 784], "labels": ["9" * 5000]}, 422, "invalid_labels"),
        ({"dataset": "test", "junk": [1]}, 422, "unknown_field"),
    ],
)
def test_bad_evaluate_input_gets_a_clear_error(
    client: TestClient, body: dict, status: int, code: str
) -> None:
    response = client.post("/evaluate", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert client.post("/evaluate", json={"instances": [[0] * 784], "labels": [0]}).status_code == 200


def test_evaluate_test_set_is_404_when_the_dataset_cannot_be_found(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr("core.datasets.SYSTEM_DIR", tmp_path)
    response = client.post("/evaluate", json={"dataset": "test"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "dataset_not_found")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/health/ready").json() == {
        "status": "ready",
        "model": {"name": "fashion-mnist", "version": 1},
        "models": [{"name": "fashion-mnist", "version": 1}],
    }


def test_not_ready_without_a_current_version(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient as Client

    from service.app import create_app
    from service.settings import Settings

    with Client(create_app(Settings(model_store=tmp_path))) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/health/ready")
        assert (ready.status_code, ready.json()["error"]["code"]) == (503, "not_ready")
        predict = client.post("/predict", json={"instances": [[0] * 784]})
        assert (predict.status_code, predict.json()["error"]["code"]) == (503, "not_ready")


def test_model_metadata(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["version"] == 1 and body["engine"] == "onnx"
    assert body["class_names"][0] == "T-shirt/top"
    assert body["validation"]["accuracy"] > 0.9 and "created_at" in body
    listing = client.get("/models").json()["models"]
    assert listing == [
        {
            "name": "fashion-mnist",
            "default": True,
            "version": 1,
            "loaded_versions": [1],
            "class_names": body["class_names"],
        }
    ]


def test_a_served_models_versions_and_figures_are_readable(client: TestClient) -> None:
    assert client.get("/models/fashion-mnist").json() == client.get("/model").json()
    table = client.get("/models/fashion-mnist/versions").json()
    assert (table["current"], table["served"]) == (1, 1)
    assert [row["version"] for row in table["versions"]] == [1] and table["versions"][0]["served"]
    for figure in ("learning_curves.png", "reliability.png"):
        response = client.get(f"/models/fashion-mnist/versions/1/figures/{figure}")
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG\r\n")
        assert (
            response.headers["content-type"] == "image/png"
            and "immutable" in response.headers["cache-control"]
        )


@pytest.mark.parametrize(
    "path",
    [
        "/models/fashion-mnist/versions/1/figures/metadata.json",  # a file, but not a figure
        "/models/fashion-mnist/versions/1/figures/model.onnx",
        "/models/fashion-mnist/versions/1/figures/..%2Fcurrent.json",
        "/models/fashion-mnist/versions/1/figures/%2E%2E",
        "/models/fashion-mnist/versions/2/figures/learning_curves.png",  # no such version
        "/models/fashion-mnist/versions/0/figures/learning_curves.png",
        "/models/fashion-mnist/versions/-1/figures/learning_curves.png",
        "/models/fashion-mnist/versions/99999999999999999999/figures/learning_curves.png",
        "/models/fashion-mnist/versions/abc/figures/learning_curves.png",
        "/models/other/versions/1/figures/learning_curves.png",  # not a served model
        "/models/..%2F..%2Fetc/versions",
        "/models/other",
    ],
)
def test_anything_but_a_served_versions_figure_is_a_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "/" not in response.json()["error"]["message"].replace("/models", "")  # no server path


def test_a_version_without_a_figure_is_a_404_not_a_500(store_copy: Path) -> None:
    (store_copy / "fashion-mnist" / "1" / "reliability.png").unlink()
    for client in make_client(store_copy):
        response = client.get("/models/fashion-mnist/versions/1/figures/reliability.png")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "figure_not_found")


@pytest.mark.parametrize("kind", ["symlink to a secret", "not a PNG"])
def test_a_figure_is_served_only_as_the_versions_own_png(store_copy: Path, tmp_path: Path, kind: str) -> None:
    # A hostile training job's symlink to /proc/self/environ would have served API_KEY.
    secret = tmp_path / "environ"
    secret.write_bytes(b"API_KEY=hunter2\x00")
    figure = store_copy / "fashion-mnist" / "1" / "learning_curves.png"
    figure.unlink()
    if kind == "symlink to a secret":
        figure.symlink_to(secret)
    else:
        figure.write_bytes(secret.read_bytes())
    for client in make_client(store_copy):
        response = client.get("/models/fashion-mnist/versions/1/figures/learning_curves.png")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "figure_not_found")
        assert b"hunter2" not in response.content
        assert str(tmp_path) not in response.text


def onnx_with_external_data(location: str) -> bytes:
    """A model.onnx whose weights are said to lie in another file."""
    weights = onnx.numpy_helper.from_array(np.zeros((784, 10), np.float32), "weights")
    weights.ClearField("raw_data")
    weights.data_location = onnx.TensorProto.EXTERNAL
    weights.external_data.add(key="location", value=location)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["pixels", "weights"], ["probabilities"])],
        "external",
        [onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, [None, 784])],
        [onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 10])],
        [weights],
    )
    return onnx.helper.make_model(graph).SerializeToString()


def test_reasons_name_the_model_and_version_never_a_server_path(store_copy: Path) -> None:
    version = store_copy / "fashion-mnist" / "7"
    shutil.copytree(store_copy / "fashion-mnist" / "1", version)
    (version / "metadata.json").write_text("{not json")
    escaping = store_copy / "fashion-mnist" / "9"  # ONNX Runtime's refusal names both folders
    shutil.copytree(store_copy / "fashion-mnist" / "1", escaping)
    (escaping / "model.onnx").write_bytes(onnx_with_external_data("../../../../etc/hostname"))
    for client in make_client(store_copy):
        for missing in (7, 8, 9):
            response = client.post(
                f"/v2/models/fashion-mnist/versions/{missing}/infer",
                json={
                    "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]
                },
            )
            assert response.status_code == 404, response.text
            assert f"version {missing}" in response.json()["error"]
            assert str(store_copy) not in response.text, response.text


def test_stats_sums_up_inference_requests_latency_and_predictions(client: TestClient) -> None:
    before = client.get("/stats").json()
    client.post("/predict", json={"instances": synthetic_images(np.array([7, 7, 1])).tolist()})
    client.post("/predict", json={"instances": [[999] * 784]})
    client.get("/health")  # not an inference request
    after = client.get("/stats").json()
    assert after["time"] >= before["time"]
    assert after["requests"] == before["requests"] + 2 and after["errors"] == before["errors"]
    assert after["latency"]["count"] == before["latency"]["count"] + 2
    assert after["latency"]["sum"] > before["latency"]["sum"]
    buckets = after["latency"]["buckets"]
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    assert buckets[-1][1] <= after["latency"]["count"]
    mix = after["predictions"]["fashion-mnist"]
    assert mix["Sneaker"] == before["predictions"].get("fashion-mnist", {}).get("Sneaker", 0) + 2


def test_metrics_parse_and_move_with_traffic(client: TestClient) -> None:
    before = samples(client)
    client.post("/predict", json={"instances": synthetic_images(np.array([7, 7, 1])).tolist()})
    client.post("/predict", json={"instances": [[999] * 784]})
    after = samples(client)
    ok = ("http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    bad = ("http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "422")))
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    sneaker = ("model_predictions_total", (("class_name", "Sneaker"), ("model", "fashion-mnist")))
    assert after[sneaker] == before.get(sneaker, 0) + 2
    batches = ("model_batch_size_images_count", (("model", "fashion-mnist"),))
    assert after[batches] > before.get(batches, 0)
    assert after[("model_info", (("engine", "onnx"), ("name", "fashion-mnist"), ("version", "1")))] == 1
    assert ("http_request_duration_seconds_count", (("route", "/predict"),)) in after
    assert ("model_reloads_total", (("model", "fashion-mnist"), ("outcome", "success"))) in after
    # What clients send, for dashboards: confidence per prediction and OOD flags.
    confidence = ("model_prediction_confidence_count", (("model", "fashion-mnist"),))
    assert after[confidence] == before.get(confidence, 0) + 3
    certain = ("model_prediction_confidence_bucket", (("le", "0.5"), ("model", "fashion-mnist")))
    assert after[certain] <= after[confidence]
    flagged = ("model_ood_predictions_total", (("model", "fashion-mnist"),))
    client.post("/predict", json={"instances": [np.zeros((28, 28)).tolist()]})  # blank: flagged
    assert samples(client)[flagged] == after.get(flagged, 0) + 1


def test_request_ids_are_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id; drop"}).headers["x-request-id"]
    assert len(generated) == 32 and generated != client.get("/health").headers["x-request-id"]


@pytest.fixture(scope="module")
def secured(tiny_store: Path) -> Iterator[TestClient]:
    yield from make_client(tiny_store, api_key=KEY)


@pytest.mark.parametrize("path", ["/predict", "/evaluate", "/admin/reload"])
def test_api_key_is_required_when_configured(secured: TestClient, path: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = secured.post(path, json={"instances": [[0] * 784], "labels": [0]}, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthorized")


def test_either_header_carries_the_key(secured: TestClient) -> None:
    body = {"instances": [[0] * 784]}
    assert secured.post("/predict", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert secured.post("/predict", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_health_and_metrics_stay_open_with_a_key(secured: TestClient) -> None:
    assert secured.get("/health/ready").status_code == 200
    assert secured.get("/metrics").status_code == 200


def test_admin_endpoints_are_absent_without_a_key(client: TestClient) -> None:
    response = client.post("/admin/reload")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "admin_disabled")


@pytest.mark.parametrize(
    "path",
    [
        "/admin/versions?model=" + "m" * 20_000,
        "/v1/models/fashion-mnist:" + "x" * 20_000,
        "/models/" + "n" * 20_000,
    ],
)
def test_errors_echo_a_long_client_value_only_shortened(secured: TestClient, path: str) -> None:
    # Messages are logged: a client must not write 20 KB into the log (or the answer) through them.
    response = secured.request("POST" if ":" in path else "GET", path, headers={"X-API-Key": KEY}, json={})
    assert response.status_code == 404 and len(response.content) < 500, response.text[:200]


ACCESS_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "path", "status"}


def test_access_log_lines_hold_no_payload_and_a_graceful_stop_loses_none(
    tiny_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with running_service({"MODEL_STORE": str(tiny_store), "LOG_LEVEL": "info"}, log=log) as (port, server):
        for number in range(40):
            response = httpx.post(
                f"http://127.0.0.1:{port}/predict",
                json={"instances": [[123.456] * 784]},
                headers={"X-Request-ID": f"trace-{number}"},
            )
            assert response.status_code == 200
        server.send_signal(signal.SIGTERM)  # at once: the last lines are still buffered
        # uvicorn finishes in-flight requests, then re-raises SIGTERM so the exit status reports it.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "123.456" not in text
    lines = [json.loads(line) for line in text.splitlines() if '"service.access"' in line]
    traced = [line for line in lines if line["request_id"].startswith("trace-")]
    assert [line["request_id"] for line in traced] == [f"trace-{n}" for n in range(40)]
    for line in traced:
        assert set(line) == ACCESS_FIELDS | {"duration_ms", "client"}
        assert (line["level"], line["message"]) == ("info", "request")
        assert (line["method"], line["path"]) == ("POST", "/predict")
        assert line["status"] == 200 and line["duration_ms"] > 0 and line["client"] == "127.0.0.1"


def test_the_access_log_writes_whole_lines_and_escapes_what_orjson_cannot_encode(tmp_path: Path) -> None:
    from service.logs import AccessLog

    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        access = AccessLog(fd)
        paths = ["/" + "p" * 10_000, "/caf\udce9", *[f"/{n}" for n in range(300)]]  # a line past PIPE_BUF
        for number, route in enumerate(paths):
            access.record({"request_id": str(number), "path": route})
        access.flush()
    finally:
        os.close(fd)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["path"] for line in written] == paths
    assert [line["request_id"] for line in written] == [str(n) for n in range(len(paths))]


def test_the_test_set_is_read_once_and_shared(
    tiny_store: Path, synthetic_data_dir: Path, tmp_path: Path
) -> None:
    import shutil

    data = Path(shutil.copytree(synthetic_data_dir, tmp_path / "data"))
    for client in make_client(tiny_store, fashion_mnist_dir=data):
        assert client.post("/evaluate", json={"dataset": "test"}).json()["count"] == 200
        shutil.rmtree(data)  # later evaluations use what was read, not the files
        assert client.post("/evaluate", json={"dataset": "test", "limit": 10}).json()["count"] == 10


def test_an_unreadable_test_set_names_no_server_path(tiny_store: Path, tmp_path: Path) -> None:
    from tests.helpers import write_fashion_mnist

    data = write_fashion_mnist(tmp_path / "data")
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    for client in make_client(tiny_store, fashion_mnist_dir=data):
        response = client.post("/evaluate", json={"dataset": "test"})
        assert (response.status_code, response.json()["error"]["code"]) == (500, "dataset_error")
        assert str(tmp_path) not in response.text


def test_model_metadata_shows_no_server_paths_or_library_versions(client: TestClient) -> None:
    body = client.get("/model").json()
    assert "framework" not in body and "dataset_source" not in body["training"]
    assert "/" not in str(body["training"])


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/model", "/metrics"])
def test_health_checkers_may_use_head(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""


def test_json_logs_survive_values_orjson_cannot_encode() -> None:
    import json
    import logging

    from service.logs import JsonFormatter

    record = logging.makeLogRecord({"msg": "big", "levelname": "ERROR", "version": 2**64 + 1})
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["version"]) == ("big", str(2**64 + 1))


def test_the_api_documentation_is_served_from_the_service_itself(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and b"cdn" not in page.content.lower()
    assert "script-src 'self' 'sha256-" in page.headers["content-security-policy"]
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert f"/docs/assets/{name}".encode() in page.content
        asset = client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 500
        again = client.get(f"/docs/assets/{name}", headers={"if-none-match": asset.headers["etag"]})
        assert again.status_code == 304
    assert client.get("/docs/assets/..%2Fpyproject.toml").status_code == 404
    assert client.get("/redoc").status_code == 404
