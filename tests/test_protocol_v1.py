"""TF Serving's REST API (KServe V1), with requests shaped as TF Serving's REST documentation shows them."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.store import ONNX_FILE
from tests.helpers import image_bytes, make_client, synthetic_images


@pytest.fixture(scope="module")
def client(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    store = Path(shutil.copytree(tiny_store, tmp_path_factory.mktemp("v1") / "store"))
    shutil.copytree(store / "fashion-mnist" / "1", store / "fashion-mnist" / "2")  # not promoted
    shutil.copytree(store / "fashion-mnist" / "1", store / "fashion-mnist" / "3")
    (store / "fashion-mnist" / "3" / ONNX_FILE).write_bytes(b"not a model")  # fails verification
    yield from make_client(store)


def pixels(*labels: int) -> np.ndarray:
    return synthetic_images(np.array(labels), seed=31)


def test_model_status_and_metadata(client: TestClient) -> None:
    assert client.get("/v1/models/fashion-mnist").json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert (
        client.get("/v1/models/fashion-mnist/versions/2").json()["model_version_status"][0]["version"] == "2"
    )
    signature = client.get("/v1/models/fashion-mnist/metadata").json()["metadata"]["signature_def"][
        "signature_def"
    ]["serving_default"]
    assert signature["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert set(signature["outputs"]) == {"probabilities", "ood_score", "ood"}


def test_row_format_predict(client: TestClient) -> None:
    response = client.post("/v1/models/fashion-mnist:predict", json={"instances": pixels(1, 6).tolist()})
    assert response.status_code == 200
    rows = response.json()["predictions"]
    assert [np.argmax(row["probabilities"]) for row in rows] == [1, 6]
    assert all(row["ood"] is False and row["ood_score"] >= 0 for row in rows)


def test_named_inputs_columnar_format_and_an_explicit_version(client: TestClient) -> None:
    named = client.post(
        "/v1/models/fashion-mnist/versions/2:predict",
        json={"signature_name": "serving_default", "instances": [{"pixels": pixels(3)[0].tolist()}]},
    )
    assert np.argmax(named.json()["predictions"][0]["probabilities"]) == 3
    columnar = client.post(
        "/v1/models/fashion-mnist:predict", json={"inputs": {"pixels": pixels(4, 5).reshape(2, 784).tolist()}}
    )
    outputs = columnar.json()["outputs"]
    assert np.argmax(outputs["probabilities"], axis=1).tolist() == [4, 5] and len(outputs["ood"]) == 2


def test_b64_images_go_through_the_upload_conversion(client: TestClient) -> None:
    photo = 255 - np.kron(pixels(7)[0], np.ones((6, 6), np.uint8))  # dark on light, 168 x 168
    encoded = base64.b64encode(image_bytes(photo, "JPEG", quality=95)).decode()
    response = client.post("/v1/models/fashion-mnist:predict", json={"instances": [{"b64": encoded}]})
    assert np.argmax(response.json()["predictions"][0]["probabilities"]) == 7


def test_classify_returns_labels_and_scores_best_first(client: TestClient) -> None:
    response = client.post(
        "/v1/models/fashion-mnist:classify", json={"examples": [{"pixels": pixels(9)[0].tolist()}]}
    )
    results = response.json()["results"]
    assert results[0][0][0] == "Ankle boot" and len(results[0]) == 10
    scores = [score for _, score in results[0]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/models/nope:predict", {"instances": [[0] * 784]}, 404, "not served"),
        ("/v1/models/fashion-mnist:explain", {"instances": [[0] * 784]}, 404, "use :predict or :classify"),
        ("/v1/models/fashion-mnist/versions/9:predict", {"instances": [[0] * 784]}, 404, "cannot be served"),
        ("/v1/models/fashion-mnist:predict", {"instances": [[0] * 783]}, 400, "28x28"),
        ("/v1/models/fashion-mnist:predict", {"instances": [[300] * 784]}, 400, "0-255"),
        ("/v1/models/fashion-mnist:predict", {"instances": [{"b64": "not base64!"}]}, 400, "base64"),
        (
            "/v1/models/fashion-mnist:predict",
            {"instances": [{"b64": "aGVsbG8="}]},
            400,
            "not a recognised image",
        ),
        ("/v1/models/fashion-mnist:predict", {"instances": [[0] * 784, {"b64": "aGVsbG8="}]}, 400, "mixture"),
        ("/v1/models/fashion-mnist:predict", {"rows": []}, 400, "needs 'instances'"),
        ("/v1/models/fashion-mnist:predict", {"instances": [[True] + [0] * 783]}, 400, "boolean"),
        ("/v1/models/fashion-mnist:predict", {"instances": [[0] * 784] * 1025}, 400, "limit of 1024"),
    ],
)
def test_mistakes_are_errors_in_tf_servings_shape(
    client: TestClient, path: str, body: object, status: int, fragment: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and fragment in response.json()["error"]


def test_a_version_that_fails_verification_is_a_404_with_the_reason(client: TestClient) -> None:
    for _ in range(2):  # the second answer comes from memory, without loading it again
        response = client.post("/v1/models/fashion-mnist/versions/3:predict", json={"instances": [[0] * 784]})
        assert response.status_code == 404
        assert "version 3 cannot be served" in response.json()["error"]
        assert "ONNX Runtime" in response.json()["error"]
    assert client.post("/v1/models/fashion-mnist:predict", json={"instances": [[0] * 784]}).status_code == 200
