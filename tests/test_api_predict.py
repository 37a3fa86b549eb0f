from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.helpers import image_bytes, synthetic_images


def images(*labels: int) -> np.ndarray:
    return synthetic_images(np.array(labels), seed=5)


def test_json_instances_get_probabilities_and_the_argmax_class(client: TestClient) -> None:
    batch = images(3, 7)
    response = client.post("/predict", json={"instances": batch.tolist()})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "fashion-mnist", "version": 1}
    assert len(body["class_names"]) == 10
    assert [p["class_id"] for p in body["predictions"]] == [3, 7]
    for prediction in body["predictions"]:
        assert prediction["class_name"] == body["class_names"][prediction["class_id"]]
        assert prediction["confidence"] == max(prediction["probabilities"])
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_flat_and_nested_instances_may_be_mixed(client: TestClient) -> None:
    image = images(4)[0]
    response = client.post("/predict", json={"instances": [image.ravel().tolist(), image.tolist()]})
    first, second = response.json()["predictions"]
    assert first["probabilities"] == pytest.approx(second["probabilities"])


def test_top_k_lists_the_most_likely_classes_in_order(client: TestClient) -> None:
    response = client.post("/predict?top_k=3", json={"instances": images(2).tolist()})
    top = response.json()["predictions"][0]["top_k"]
    assert top[0]["class_id"] == 2
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_png_files_in_a_form_match_their_json_pixels(client: TestClient) -> None:
    batch = images(1, 5, 8)
    files = [("files", (f"{i}.png", image_bytes(img), "image/png")) for i, img in enumerate(batch)]
    from_files = client.post("/predict", files=files).json()["predictions"]
    from_json = client.post("/predict", json={"instances": batch.tolist()}).json()["predictions"]
    assert [p["class_id"] for p in from_files] == [1, 5, 8]
    for a, b in zip(from_files, from_json, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_a_raw_image_body(client: TestClient) -> None:
    response = client.post(
        "/predict", content=image_bytes(images(6)[0]), headers={"content-type": "image/png"}
    )
    assert response.json()["predictions"][0]["class_id"] == 6


def test_a_dark_on_light_jpeg_photo_is_inverted_before_prediction(client: TestClient) -> None:
    light_background = 255 - np.kron(images(9)[0], np.ones((8, 8), np.uint8))  # 224 x 224, inverted colours
    data = image_bytes(light_background, "JPEG", mode="RGB", quality=95)
    auto = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")}).json()
    assert auto["predictions"][0]["class_id"] == 9


def test_binary_octet_stream_of_uint8_pixels(client: TestClient) -> None:
    batch = images(*range(10), *range(10))
    response = client.post(
        "/predict", content=batch.tobytes(), headers={"content-type": "application/octet-stream"}
    )
    assert [p["class_id"] for p in response.json()["predictions"]] == list(range(10)) * 2


def test_npy_arrays(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, images(0, 9).astype(np.float32))
    response = client.post(
        "/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert [p["class_id"] for p in response.json()["predictions"]] == [0, 9]


def test_results_follow_request_order_for_many_images(client: TestClient) -> None:
    labels = np.random.default_rng(3).integers(0, 10, 300)
    response = client.post("/predict", json={"instances": synthetic_images(labels, seed=9).tolist()})
    assert [p["class_id"] for p in response.json()["predictions"]] == labels.tolist()


def test_the_openapi_document_describes_every_input_format(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(content) >= {"application/json", "multipart/form-data", "image/*", "application/octet-stream"}
    assert "instances" in content["application/json"]["schema"]["properties"]
    assert "PredictResponse" in spec["components"]["schemas"]


def test_the_openapi_document_is_valid_for_schema_tools(client: TestClient) -> None:
    # Client generators refuse a document whose paths name parameters an operation does not define.
    spec = client.get("/openapi.json").json()
    assert [str(error) for error in OpenAPIV31SpecValidator(spec).iter_errors()] == []
    infer = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert {p["name"] for p in infer["parameters"]} == {"name", "version"}


def test_every_prediction_carries_an_ood_flag_and_score(client: TestClient) -> None:
    inside = images(2)[0]
    blank = np.zeros((28, 28))
    predictions = client.post("/predict", json={"instances": [inside.tolist(), blank.tolist()]}).json()[
        "predictions"
    ]
    assert [p["ood"] for p in predictions] == [False, True]
    assert predictions[1]["ood_score"] > predictions[0]["ood_score"] >= 0
    assert predictions[1]["class_name"] and len(predictions[1]["probabilities"]) == 10  # still answered


def test_include_input_returns_the_image_the_model_saw(client: TestClient) -> None:
    from PIL import Image

    photo = 255 - np.kron(images(4)[0], np.ones((5, 5), np.uint8))  # 140 x 140, dark on light
    response = client.post(
        "/predict?include=input", content=image_bytes(photo, "PNG"), headers={"content-type": "image/png"}
    )
    url = response.json()["predictions"][0]["input"]
    assert url.startswith("data:image/png;base64,")
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    band = seen[:, 14] > 128  # the light-on-dark band the model was trained on: class 4 is 10 rows
    assert 9 <= band.sum() <= 11 and seen[0, 0] == 0
    pixels = client.post("/predict?include=input", json={"instances": [images(1)[0].tolist()]}).json()
    assert pixels["predictions"][0]["input"].startswith("data:image/png;base64,")
    assert (
        "input"
        not in client.post("/predict", json={"instances": [images(1)[0].tolist()]}).json()["predictions"][0]
    )


def test_include_refuses_what_it_cannot_include(client: TestClient) -> None:
    response = client.post("/predict?include=gradients", json={"instances": [images(1)[0].tolist()]})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("include may list input")
