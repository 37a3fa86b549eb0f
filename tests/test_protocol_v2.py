"""The Open Inference Protocol v2, driven by the real tritonclient against the real server:
JSON and binary tensors, model metadata, explicit versions, two models, classification, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench.attacks import running_service
from tests.helpers import REPO, synthetic_images

pytestmark = pytest.mark.slow
SECOND = "second-model"


@pytest.fixture(scope="module")
def two_model_store(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny store with a second model (a copy under another name) and an unpromoted version 2."""
    root = Path(shutil.copytree(tiny_store, tmp_path_factory.mktemp("v2") / "store"))
    shutil.copytree(root / "fashion-mnist", root / SECOND)
    shutil.copytree(root / "fashion-mnist" / "1", root / "fashion-mnist" / "2")
    return root


@pytest.fixture(scope="module")
def url(two_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"MODEL_STORE": str(two_model_store), "MODELS": SECOND, "LOG_LEVEL": "warning"}
    log = tmp_path_factory.mktemp("log") / "server.log"
    with running_service(env, repo=REPO, log=log) as (port, _):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url) as client:
        yield client


def pixels(*labels: int) -> np.ndarray:
    return synthetic_images(np.array(labels), seed=21).astype(np.float32)


def infer(
    client: triton.InferenceServerClient, images: np.ndarray, binary: bool, **options: object
) -> triton.InferResult:
    tensor = triton.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer("fashion-mnist", [tensor], outputs=outputs, **options)  # type: ignore[arg-type]


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "fashion-serving"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_metadata_describes_inputs_and_outputs(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("fashion-mnist")
    metadata = client.get_model_metadata("fashion-mnist")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "ood_score", "ood"]
    assert metadata["outputs"][0]["shape"] == [-1, 10]


def test_the_model_configuration_is_tritons_for_its_tools(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("fashion-mnist")
    assert (config["name"], config["platform"], config["backend"]) == (
        "fashion-mnist",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    # Batched: dims leave out the batch dimension, and max_batch_size is what any request may carry.
    assert config["max_batch_size"] == 1024  # MAX_INSTANCES
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [28, 28]}]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
        {"name": "ood_score", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}},
        {"name": "ood", "data_type": "TYPE_BOOL", "dims": [1], "reshape": {"shape": []}},
    ]
    assert config["dynamic_batching"]["preferred_batch_size"] == [512]  # MAX_BATCH_IMAGES
    assert config["version_policy"] == {"specific": {"versions": ["1"]}}
    second = client.get_model_config("fashion-mnist", "2")
    assert second["version_policy"] == {"specific": {"versions": ["2"]}}
    assert "model_configuration" in client.get_server_metadata()["extensions"]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_config("no-such-model")
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("fashion-mnist", "7")
    assert missing.value.status() == "404"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/fashion-mnist/versions/abc/config", 400),
        ("/v2/models/fashion-mnist/versions/1e3/config", 400),
        ("/v2/models/fashion-mnist/versions/" + "9" * 20_000 + "/config", 400),
        ("/v2/models/fashion-mnist/versions/99999999999999999999/config", 404),
        ("/v2/models/fashion-mnist/versions/-1/config", 404),
        ("/v2/models/fashion-mnist/versions/0/config", 404),
        ("/v2/models/" + "x" * 20_000 + "/config", 404),
    ],
)
def test_a_configuration_asked_for_a_bad_model_or_version_is_a_short_4xx(
    url: str, path: str, status: int
) -> None:
    response = httpx.get(f"http://{url}{path}")
    assert response.status_code == status and len(response.content) < 500, response.text[:200]
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_returns_the_probabilities_of_predict(
    client: triton.InferenceServerClient, url: str, binary: bool
) -> None:
    images = pixels(3, 7, 9)
    result = infer(client, images, binary, request_id="req-7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (3, 10)
    assert probabilities.argmax(axis=1).tolist() == [3, 7, 9]
    expected = httpx.post(f"http://{url}/predict", json={"instances": images.tolist()}).json()
    assert np.allclose(probabilities, [p["probabilities"] for p in expected["predictions"]], atol=1e-6)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "req-7",
        "fashion-mnist",
        "1",
    )


def test_every_output_by_default_including_the_ood_score(client: triton.InferenceServerClient) -> None:
    images = np.concatenate([pixels(2), np.zeros((1, 28, 28), np.float32)])
    tensor = triton.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("fashion-mnist", [tensor])
    ood = result.as_numpy("ood")
    scores = result.as_numpy("ood_score")
    assert ood is not None and scores is not None
    assert ood.tolist() == [False, True] and scores[1] > scores[0]


def test_an_explicit_version_and_a_second_model(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("pixels", [1, 784], "UINT8")
    tensor.set_data_from_numpy(pixels(5).astype(np.uint8).reshape(1, 784))
    result = client.infer("fashion-mnist", [tensor], model_version="2")
    assert result.get_response()["model_version"] == "2"
    assert client.is_model_ready("fashion-mnist", model_version="2")
    assert client.infer(SECOND, [tensor]).get_response()["model_name"] == SECOND
    with pytest.raises(InferenceServerException, match="version 9 cannot be served"):
        client.infer("fashion-mnist", [tensor], model_version="9")
    with pytest.raises(InferenceServerException, match="'nope' is not served"):
        client.infer("nope", [tensor])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_classification_extension(client: triton.InferenceServerClient, binary: bool) -> None:
    images = pixels(8)
    tensor = triton.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = client.infer("fashion-mnist", [tensor], outputs=[wanted])
    top = result.as_numpy("probabilities")
    assert top is not None and top.shape == (1, 3)
    entries = [item.decode() if isinstance(item, bytes) else str(item) for item in top[0]]
    score, index, label = entries[0].split(":")
    assert (index, label) == ("8", "Bag") and 0 < float(score) <= 1
    scores = [float(entry.split(":")[0]) for entry in entries]
    assert scores == sorted(scores, reverse=True)


def test_the_raw_binary_form_and_error_shapes(url: str) -> None:
    base = f"http://{url}/v2/models/fashion-mnist"
    raw = httpx.post(
        f"{base}/infer", content=pixels(4).tobytes(), headers={"Inference-Header-Content-Length": "0"}
    )
    assert raw.status_code == 200 and "inference-header-content-length" not in raw.headers
    body = raw.json()
    assert np.argmax(body["outputs"][0]["data"]) == 4
    bad_shape = httpx.post(
        f"{base}/infer",
        json={"inputs": [{"name": "pixels", "shape": [1, 27], "datatype": "FP32", "data": [0] * 27}]},
    )
    assert bad_shape.status_code == 400 and "input shape must be" in bad_shape.json()["error"]
    out_of_range = httpx.post(
        f"{base}/infer",
        json={"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [300] * 784}]},
    )
    assert out_of_range.status_code == 400 and "0-255" in out_of_range.json()["error"]
    boolean = httpx.post(
        f"{base}/infer",
        json={"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [True] * 784}]},
    )
    assert boolean.status_code == 400 and "boolean" in boolean.json()["error"]
    repeated = httpx.post(
        f"{base}/infer",
        json={
            "inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}],
            "outputs": [{"name": "probabilities"}] * 1000,
        },
    )
    assert repeated.status_code == 400 and "once" in repeated.json()["error"]
    not_json = httpx.post(f"{base}/infer", content=b"{nope")
    assert not_json.status_code == 400 and set(not_json.json()) == {"error"}
    unknown = httpx.get(f"http://{url}/v2/models/nope")
    assert unknown.status_code == 404 and "not served" in unknown.json()["error"]
    lying = httpx.post(
        f"{base}/infer",
        content=b'{"inputs":[{"name":"pixels","shape":[1,784],"datatype":"FP32","parameters":{"binary_data_size":9}}]}',
        headers={"Inference-Header-Content-Length": "9999"},
    )
    assert lying.status_code == 400


@pytest.fixture(scope="module")
def secured_url(two_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"MODEL_STORE": str(two_model_store), "API_KEY": "sesame", "LOG_LEVEL": "warning"}
    log = tmp_path_factory.mktemp("log") / "server.log"
    with running_service(env, repo=REPO, log=log) as (port, _):
        yield f"127.0.0.1:{port}"


def test_the_model_repository_extension_serves_and_stops_models(secured_url: str) -> None:
    key = {"Authorization": "Bearer sesame"}
    tensor = triton.InferInput("pixels", [1, 784], "UINT8")
    tensor.set_data_from_numpy(pixels(5).astype(np.uint8).reshape(1, 784))
    with triton.InferenceServerClient(secured_url) as client:
        with pytest.raises(InferenceServerException, match="API key"):
            client.get_model_repository_index()
        index = {row["name"]: row for row in client.get_model_repository_index(headers=key)}
        assert index["fashion-mnist"]["state"] == "READY" and index[SECOND]["state"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException, match="not served"):
            client.infer(SECOND, [tensor], headers=key)
        client.load_model(SECOND, headers=key)
        assert client.is_model_ready(SECOND)
        assert client.infer(SECOND, [tensor], headers=key).get_response()["model_name"] == SECOND
        client.unload_model(SECOND, headers=key)
        with pytest.raises(InferenceServerException, match="not served"):
            client.infer(SECOND, [tensor], headers=key)
        with pytest.raises(InferenceServerException, match="cannot be unloaded"):
            client.unload_model("fashion-mnist", headers=key)
        with pytest.raises(InferenceServerException, match="has no model 'ghost'"):
            client.load_model("ghost", headers=key)


@pytest.mark.parametrize("k", [-3, 0, True, "3", 1.5])
def test_a_request_level_classification_that_is_not_a_positive_integer_is_a_400(url: str, k: object) -> None:
    document = {
        "inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}],
        "parameters": {"classification": k},
    }
    response = httpx.post(f"http://{url}/v2/models/fashion-mnist/infer", json=document)
    assert response.status_code == 400, response.text
    assert "classification must be a positive integer" in response.json()["error"]


ONE_IMAGE = {"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}


@pytest.mark.parametrize(
    ("document", "header_length"),
    [
        ({"inputs": [ONE_IMAGE]}, "9" * 5000),  # more digits than int() accepts
        ({"inputs": [{**ONE_IMAGE, "parameters": ["binary_data_size", 9]}]}, None),
        ({"inputs": [{**ONE_IMAGE, "parameters": "binary"}]}, None),
        ({"inputs": [ONE_IMAGE], "outputs": [{"name": "probabilities", "parameters": 3}]}, None),
        ({"inputs": [ONE_IMAGE], "outputs": [{"name": "probabilities", "parameters": [1]}]}, None),
        ({"inputs": [ONE_IMAGE], "parameters": "classification"}, None),
    ],
    ids=["5000-digit-header-length", "input-parameters-list", "input-parameters-string",
         "output-parameters-number", "output-parameters-list", "request-parameters-string"],
)  # fmt: skip
def test_malformed_v2_requests_are_400s_not_500s(url: str, document: dict, header_length: str | None) -> None:
    content = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
    response = httpx.post(f"http://{url}/v2/models/fashion-mnist/infer", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_json_numbers_are_held_to_the_json_image_limit_before_parsing(url: str) -> None:
    # 5,000 rows of numbers (15 MiB) are refused from a count of their commas, before orjson reads them,
    # and a binary-data header does not lift JSON data to the bulk limit.
    rows = b"[" + b",".join([b"[" + b",".join([b"0.5"] * 784) + b"]"] * 5000) + b"]"
    body = b'{"inputs":[{"name":"pixels","shape":[5000,784],"datatype":"FP32","data":' + rows + b"}]}"
    for headers in ({}, {"Inference-Header-Content-Length": str(len(body))}):
        response = httpx.post(f"http://{url}/v2/models/fashion-mnist/infer", content=body, headers=headers)
        assert response.status_code in (400, 413), response.text
        assert "holds more values" in response.json()["error"]  # the count before parsing said so
