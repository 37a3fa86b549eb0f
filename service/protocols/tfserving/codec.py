"""TF Serving's REST API (KServe V1) on the wire: the row and columnar formats, and b64 images.

A request lists `instances` (row format) or gives `inputs` (columnar). Each instance is an image's
pixels (28x28 nested or 784 flat, 0-255), or `{"b64": "..."}` holding image file bytes (PNG, JPEG,
... which go through the same conversion as uploads), optionally wrapped as the named input
`{"pixels": ...}`. Responses follow TF Serving: `predictions` per instance (a list for a one-output
model, an object of named outputs otherwise) or columnar `outputs`; `:classify` gives `results`,
per example a list of [label, score], best first.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.preprocessing import InvalidPixels
from service.errors import InvalidRequest, brief
from service.http.bodies import has_boolean, may_hold_boolean, pixels_from_json
from service.inference.model import Inference, LoadedModel
from service.protocols.oip.codec import INPUT_NAME, TensorSpec, input_spec, output_specs

B64 = "b64"


@dataclass(frozen=True)
class V1Request:
    row_format: bool
    pixels: np.ndarray | None  # (N, 28, 28) when the request sent pixels
    files: list[bytes] | None  # image files (their bytes) when it sent {"b64": ...}


def parse_request(document: Any, key: str, max_instances: int, body: bytes) -> V1Request:
    """Pixels or image bytes from `key` (instances or examples: row format) or `inputs` (columnar)."""
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if key == "instances" and "inputs" in document and "instances" not in document:
        row_format, values = False, _unwrap(document["inputs"])
    elif key in document:
        row_format, values = True, document[key]
    else:
        raise InvalidRequest(f"the request needs '{key}'" + (" or 'inputs'" if key == "instances" else ""))
    if not isinstance(values, list) or not values:
        raise InvalidRequest(f"'{key if row_format else 'inputs'}' must be a non-empty list")
    if len(values) > max_instances:
        raise InvalidRequest(f"{len(values)} instances, more than the limit of {max_instances} per request")
    items = [_unwrap(item) for item in values]
    encoded = [isinstance(item, dict) for item in items]
    if any(encoded) and not all(encoded):
        raise InvalidRequest('send every instance as pixels or every one as {"b64": ...}, not a mixture')
    if all(encoded):
        return V1Request(row_format, None, [_b64(item) for item in items])
    if may_hold_boolean(body) and has_boolean(items):
        raise InvalidPixels("pixel values must be numbers, received a boolean")
    return V1Request(row_format, pixels_from_json(items), None)


def _unwrap(item: Any) -> Any:
    """{"pixels": value} (the named input) -> value; anything else as it is."""
    if isinstance(item, dict) and set(item) == {INPUT_NAME}:
        return item[INPUT_NAME]
    return item


def _b64(item: dict[str, Any]) -> bytes:
    if set(item) != {B64} or not isinstance(item[B64], str):
        raise InvalidRequest(f'an encoded instance is {{"b64": "..."}}, received keys {brief(sorted(item))}')
    try:
        return base64.b64decode(item[B64], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"b64 is not valid base64 ({brief(exc)})") from exc


def predictions(model: LoadedModel, inference: Inference, row_format: bool) -> dict[str, Any]:
    columns = _columns(model, inference)
    if len(columns) == 1:
        only = next(iter(columns.values()))
        return {"predictions": only} if row_format else {"outputs": only}
    if not row_format:
        return {"outputs": columns}
    count = len(inference.probabilities)
    return {"predictions": [{name: values[i] for name, values in columns.items()} for i in range(count)]}


def _columns(model: LoadedModel, inference: Inference) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {"probabilities": inference.probabilities.tolist()}
    if inference.ood_scores is not None and inference.ood_flags is not None:
        columns["ood_score"] = inference.ood_scores.tolist()
        columns["ood"] = inference.ood_flags.tolist()
    return columns


def classification(model: LoadedModel, inference: Inference) -> dict[str, Any]:
    order = inference.rank()
    rows = inference.probabilities.tolist()
    return {
        "results": [[[model.class_names[i], rows[n][i]] for i in ids] for n, ids in enumerate(order.tolist())]
    }


def version_status(version: int) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


# The Open Inference Protocol's datatypes as TensorFlow names them.
TF_DTYPES = {"FP32": "DT_FLOAT", "BOOL": "DT_BOOL"}


def metadata(model: LoadedModel) -> dict[str, Any]:
    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {
            "dtype": TF_DTYPES[spec.datatype],
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape]},
            "name": spec.name,
        }

    signature = {
        "inputs": {INPUT_NAME: tensor(input_spec(model))},
        "outputs": {spec.name: tensor(spec) for spec in output_specs(model)},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
    }
