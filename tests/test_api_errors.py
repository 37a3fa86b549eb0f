"""Every bad input gets its 4xx with a JSON error code, and the next valid request still succeeds."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from core.preprocessing import InvalidInput
from service.errors import ApiError
from service.http.bodies import decode_json
from tests.helpers import image_bytes, make_client, png_declaring

GOOD = {"instances": [[0] * 784]}
PNG = image_bytes(np.zeros((28, 28), np.uint8))
JPEG = image_bytes(np.zeros((28, 28), np.uint8), "JPEG")


@pytest.fixture(scope="module")
def limited(tiny_store: Path) -> Iterator[TestClient]:
    yield from make_client(
        tiny_store,
        max_body_bytes=200_000,
        max_instances=8,
        max_image_pixels=1_000_000,
        max_request_pixels=1_500_000,
    )


def npy_header(header: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, pixels=np.zeros((1, 784), np.uint8))
    return buffer.getvalue()


def npy_of_objects() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([None] * 784, dtype=object).reshape(1, 784), allow_pickle=True)
    return buffer.getvalue()


NPY = {"content-type": "application/x-npy"}
MALFORMED_NPY_HEADER = (
    b"\x93NUMPY\x01\x00" + (40).to_bytes(2, "little") + b"{'descr': '<f8', 'shape': (\n".ljust(40)
)


def nested(value: Any) -> list[list[Any]]:
    return [[value] * 28 for _ in range(28)]


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong length", {"json": {"instances": [[0] * 783]}}, 422, "invalid_pixels"),
    ("wrong shape", {"json": {"instances": [[[0] * 27] * 28]}}, 422, "invalid_pixels"),
    ("ragged rows", {"json": {"instances": [[[0] * 28] * 27 + [[0] * 5]]}}, 422, "invalid_pixels"),
    ("strings", {"json": {"instances": [["a"] * 784]}}, 422, "invalid_pixels"),
    ("nulls", {"json": {"instances": [[None] * 784]}}, 422, "invalid_pixels"),
    ("booleans", {"json": {"instances": [[True] * 784]}}, 422, "invalid_pixels"),
    ("above 255", {"json": {"instances": [nested(256)]}}, 422, "invalid_pixels"),
    ("negative", {"json": {"instances": [nested(-0.5)]}}, 422, "invalid_pixels"),
    (
        "huge number",
        {
            "content": b'{"instances": [[' + b",".join([b"1e999"] * 784) + b"]]}",
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_json",
    ),
    (
        "NaN literal",
        {"content": b'{"instances": [[NaN]]}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "Infinity literal",
        {"content": b'{"instances": [[Infinity]]}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "broken JSON",
        {"content": b'{"instances": [', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    ("not an object", {"json": [[0] * 784]}, 422, "invalid_request"),
    ("instances not a list", {"json": {"instances": 5}}, 422, "invalid_pixels"),
    ("missing instances", {"json": {}}, 422, "missing_instances"),
    ("unknown member", {"json": {"images": []}}, 422, "unknown_field"),
    ("empty instances", {"json": {"instances": []}}, 422, "empty_instances"),
    ("too many instances", {"json": {"instances": [[0] * 784] * 9}}, 422, "too_many_instances"),
    (
        "body over the limit",
        {"content": b"0" * 200_001, "headers": {"content-type": "application/json"}},
        413,
        "payload_too_large",
    ),
    (
        "unsupported content type",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": b"hello"}, 415, "unsupported_media_type"),
    (
        "unsupported image type",
        {"content": PNG, "headers": {"content-type": "image/tiff"}},
        415,
        "unsupported_media_type",
    ),
    (
        "declared png, is jpeg",
        {"content": JPEG, "headers": {"content-type": "image/png"}},
        415,
        "content_type_mismatch",
    ),
    (
        "form part declared png, is jpeg",
        {"files": {"file": ("a.png", JPEG, "image/png")}},
        415,
        "content_type_mismatch",
    ),
    (
        "not an image",
        {"content": b"GIF89a nonsense", "headers": {"content-type": "image/gif"}},
        422,
        "invalid_image",
    ),
    ("text file in a form", {"files": {"file": ("a.txt", b"just text", "text/plain")}}, 422, "invalid_image"),
    (
        "truncated png",
        {
            "content": image_bytes(np.random.default_rng(0).integers(0, 255, (64, 64)))[:300],
            "headers": {"content-type": "image/png"},
        },
        422,
        "invalid_image",
    ),
    (
        "truncated jpeg",
        {
            "content": image_bytes(np.random.default_rng(0).integers(0, 255, (64, 64)), "JPEG")[:400],
            "headers": {"content-type": "image/jpeg"},
        },
        422,
        "invalid_image",
    ),
    (
        "decompression bomb",
        {"content": png_declaring(50_000, 50_000), "headers": {"content-type": "image/png"}},
        413,
        "image_too_large",
    ),
    ("form without files", {"files": {"note": (None, "x")}}, 422, "empty_instances"),
    (
        "multipart without a boundary",
        {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        "invalid_multipart",
    ),
    (
        "malformed multipart",
        {"content": b"--b\r\nno headers end", "headers": {"content-type": "multipart/form-data; boundary=b"}},
        400,
        "invalid_multipart",
    ),
    (
        "too many files",
        {"files": [("f", (f"{i}.png", PNG, "image/png")) for i in range(9)]},
        422,
        "too_many_instances",
    ),
    (
        "octet-stream not a multiple of 784",
        {"content": b"\0" * 785, "headers": {"content-type": "application/octet-stream"}},
        422,
        "invalid_pixels",
    ),
    (
        "broken npy",
        {"content": b"\x93NUMPY garbage", "headers": {"content-type": "application/x-npy"}},
        400,
        "invalid_npy",
    ),
    # The review's 500s (finding 6) and lenient numbers (finding 16):
    ("npz sent as npy", {"content": npz(), "headers": NPY}, 400, "invalid_npy"),
    (
        "npy declaring 10**12 values",
        {"content": npy_header({"descr": "|u1", "fortran_order": False, "shape": (10**12,)}), "headers": NPY},
        400,
        "invalid_npy",
    ),
    ("npy with a malformed header", {"content": MALFORMED_NPY_HEADER, "headers": NPY}, 400, "invalid_npy"),
    ("npy of objects (a pickle)", {"content": npy_of_objects(), "headers": NPY}, 422, "invalid_pixels"),
    (
        "multipart boundary over 256 bytes",
        {"content": b"x", "headers": {"content-type": "multipart/form-data; boundary=" + "b" * 300}},
        400,
        "invalid_multipart",
    ),
    ("a boolean among numbers", {"json": {"instances": [[0] * 783 + [True]]}}, 422, "invalid_pixels"),
    ("just above 255", {"json": {"instances": [[0] * 783 + [255.00000001]]}}, 422, "invalid_pixels"),
    (
        "objects that expand in memory",
        {"json": {"instances": [[0] * 784], "junk": [{}] * 30_000}},
        422,
        "too_many_instances",
    ),
    (
        "images too large together",
        {"files": [("f", (f"{i}.png", png_declaring(800, 800), "image/png")) for i in range(3)]},
        413,
        "image_too_large",
    ),
    (
        "npy of the wrong shape",
        {"content": b"", "npy": np.zeros((2, 10)), "headers": {"content-type": "application/x-npy"}},
        422,
        "invalid_pixels",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_predict_input_gets_a_clear_error(
    limited: TestClient, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    kwargs = dict(request_kwargs)
    if "npy" in kwargs:
        buffer = io.BytesIO()
        np.save(buffer, kwargs.pop("npy"))
        kwargs["content"] = buffer.getvalue()
    response = limited.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert limited.post("/predict", json=GOOD).status_code == 200


def test_bad_query_parameters_are_422(limited: TestClient) -> None:
    # "²", Arabic-Indic and full-width digits pass str.isdigit() (a 500 before); 5000 digits overflow int().
    for query in (
        "invert=sideways",
        "top_k=0",
        "top_k=x",
        "top_k=\u00b2",
        "top_k=\u0663",  # Arabic-Indic 3
        "top_k=\uff13",  # full-width 3
        "top_k=" + "9" * 5000,
    ):
        response = limited.post(f"/predict?{query}", json=GOOD)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")


def test_unknown_routes_and_methods_use_the_same_error_shape(limited: TestClient) -> None:
    assert limited.get("/nope").json()["error"]["code"] == "not_found"
    response = limited.get("/predict")
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"instances": json_values})))
def test_any_json_document_decodes_or_raises_a_client_error(document: Any) -> None:
    try:
        images, _ = decode_json(orjson.dumps(document), max_instances=8)
    except (ApiError, InvalidInput):
        return
    assert images.ndim == 3 and images.shape[1:] == (28, 28)
