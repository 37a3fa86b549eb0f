"""The Open Inference Protocol (KServe V2, Triton) on the wire: tensors in and out, JSON and binary.

Requests: a JSON header, optionally followed by binary tensor data whose JSON part is
`Inference-Header-Content-Length` bytes long (the binary tensor data extension); inputs carry their
data as nested or flat JSON `data`, or as `binary_data_size` bytes of the binary part. A body sent
with `Inference-Header-Content-Length: 0` is the raw data of the model's single input.
Responses: outputs as JSON `data`, or as binary when asked (`binary_data_output` for all,
`binary_data` per output), and the classification extension (`classification: k` on an output:
BYTES "score:index:label", best first).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

from core.preprocessing import INPUT_SHAPE, PIXELS_PER_IMAGE, as_batch
from service.errors import BadRequest, InvalidRequest, PayloadTooLarge, brief
from service.http.bodies import has_boolean, may_hold_boolean, parse_json
from service.http.validate import digits, is_int, is_positive_int
from service.inference.model import Inference, LoadedModel

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "pixels"
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "FP32": "f4",
        "FP64": "f8",
        "FP16": "f2",
        "UINT8": "u1",
        "UINT16": "u2",
        "UINT32": "u4",
        "UINT64": "u8",
        "INT8": "i1",
        "INT16": "i2",
        "INT32": "i4",
        "INT64": "i8",
    }.items()
}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    binary: bool
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    images: np.ndarray
    id: str | None
    outputs: list[OutputSpec] | None = None  # None: every output
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # the Open Inference Protocol's name for it
    shape: list[int]  # -1 for the batch


def input_spec(model: LoadedModel) -> TensorSpec:
    return TensorSpec(INPUT_NAME, "FP32", [-1, *model.metadata.input.shape])


def output_specs(model: LoadedModel) -> list[TensorSpec]:
    """What a version gives: probabilities, and the OOD score and flag when it has a detector."""
    outputs = [TensorSpec("probabilities", "FP32", [-1, len(model.class_names)])]
    if model.detector is not None:
        outputs += [TensorSpec("ood_score", "FP32", [-1]), TensorSpec("ood", "BOOL", [-1])]
    return outputs


def model_config(model: LoadedModel, max_batch_size: int, max_batch_images: int) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto in its JSON form), which perf_analyzer and
    Triton's clients read: dims exclude the batch dimension, since max_batch_size > 0 (the most images
    any one request may carry); a per-image scalar is dims [1] reshaped to [] so the tensor is [-1]."""
    onnx = model.engine.kind == "onnx"

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = spec.shape[1:]
        entry: dict[str, Any] = {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": dims or [1]}
        return entry if dims else {**entry, "reshape": {"shape": []}}

    return {
        "name": model.name,
        "platform": "onnxruntime_onnx" if onnx else "tensorflow_keras",
        "backend": "onnxruntime" if onnx else "tensorflow",
        "version_policy": {"specific": {"versions": [str(model.version)]}},
        "max_batch_size": max_batch_size,
        "input": [tensor(input_spec(model))],
        "output": [tensor(spec) for spec in output_specs(model)],
        # The batcher takes what is queued, up to max_batch_images, without waiting for more.
        "dynamic_batching": {"preferred_batch_size": [max_batch_images], "max_queue_delay_microseconds": 0},
        "instance_group": [{"name": model.name, "kind": "KIND_CPU", "count": 1}],
    }


def output_names(model: LoadedModel) -> list[str]:
    return [spec.name for spec in output_specs(model)]


def model_metadata(model: LoadedModel, versions: list[int]) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx" if model.engine.kind == "onnx" else "tensorflow_keras",
        "inputs": [asdict(input_spec(model))],
        "outputs": [asdict(spec) for spec in output_specs(model)],
    }


def parse_infer(
    body: bytes, header_length: str | None, model: LoadedModel, max_json_images: int, max_binary_images: int
) -> InferRequest:
    """The images and output choices of a v2 infer request (JSON, binary, or raw single input). Images
    sent as JSON numbers are held to max_json_images whatever the form; binary ones to max_binary_images."""
    if header_length is not None:
        length = _header_length(header_length, len(body))
        if length == 0:  # the raw binary form: the body is the single input, FP32
            return InferRequest(_tensor(body, "FP32", [-1, *INPUT_SHAPE], max_binary_images), None)
        header, binary = body[:length], body[length:]
    else:
        header, binary = body, b""
    document = parse_json(header, max_json_images)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidRequest("an inference request is an object with an 'inputs' list")
    inputs = document["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"model {model.name!r} has one input, {INPUT_NAME!r}; received {len(inputs)}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise InvalidRequest(
            f"unknown input {brief(tensor.get('name'))}; model {model.name!r} takes {INPUT_NAME!r}"
        )
    images = _input_images(tensor, binary, max_json_images, max_binary_images, may_hold_boolean(header))
    parameters = _parameters(document, "the request")
    if parameters.get("classification") is not None:
        _check_classification(parameters["classification"])
    request_id = document.get("id")
    return InferRequest(
        images,
        str(request_id) if request_id is not None else None,
        _output_specs(document.get("outputs"), model, bool(parameters.get("binary_data_output"))),
        bool(parameters.get("binary_data_output")),
        parameters,
    )


def _header_length(value: str, body_length: int) -> int:
    """Inference-Header-Content-Length: ASCII digits, no more than the body holds."""
    length = digits(value, len(str(body_length)))
    if length is None or length > body_length:
        raise BadRequest(f"Inference-Header-Content-Length {brief(value)} does not fit the body")
    return length


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """A `parameters` member: absent, null or an object."""
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"parameters of {where} must be an object, received {brief(parameters)}")
    return parameters


def _input_images(
    tensor: dict[str, Any], binary: bytes, max_json_images: int, max_binary_images: int, booleans: bool
) -> np.ndarray:
    """The input's images, from binary data or JSON numbers, each held to its own limit."""
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(is_int(d) for d in shape):
        raise InvalidRequest(f"input shape must be a list of integers, received {brief(shape)}")
    size = _parameters(tensor, "the input").get("binary_data_size")
    if size is not None:
        if not is_int(size) or size != len(binary):
            raise InvalidRequest(
                f"binary_data_size {brief(size)} does not match the {len(binary)} bytes after the JSON header"
            )
        return _tensor(binary, datatype, shape, max_binary_images)
    if "data" not in tensor:
        raise InvalidRequest("the input has neither 'data' nor binary_data_size")
    if datatype not in DATATYPES:
        raise InvalidRequest(f"unsupported datatype {brief(datatype)}; use {', '.join(DATATYPES)}")
    if math.prod(shape) > max_json_images * PIXELS_PER_IMAGE:
        raise PayloadTooLarge(f"at most {max_json_images} images per request")
    if booleans and has_boolean([tensor["data"]]):
        raise InvalidRequest(f"{datatype} data must be numbers, received a boolean")
    try:
        array = np.asarray(tensor["data"], dtype=DATATYPES[datatype].newbyteorder("="))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"input data is not an array of {datatype} numbers ({brief(exc)})") from exc
    return _shaped(array.reshape(-1) if array.ndim != len(shape) else array, shape, max_json_images)


def _tensor(data: bytes, datatype: Any, shape: list[int], max_images: int) -> np.ndarray:
    if datatype not in DATATYPES:
        raise InvalidRequest(f"unsupported datatype {brief(datatype)}; use {', '.join(DATATYPES)}")
    dtype = DATATYPES[datatype]
    if len(data) % dtype.itemsize:
        raise InvalidRequest(f"{len(data)} bytes is not a whole number of {datatype} values")
    values = np.frombuffer(data, dtype=dtype)
    if shape and shape[0] == -1:  # the raw form: as many images as the data holds
        shape = [len(values) // max(1, math.prod(shape[1:])), *shape[1:]]
    return _shaped(values, shape, max_images)


def _shaped(values: np.ndarray, shape: list[int], max_images: int) -> np.ndarray:
    if math.prod(shape) != values.size:
        raise InvalidRequest(f"shape {shape} needs {math.prod(shape)} values, received {values.size}")
    if len(shape) not in (2, 3) or tuple(shape[1:]) not in (INPUT_SHAPE, (PIXELS_PER_IMAGE,)):
        raise InvalidRequest(f"input shape must be [N, 28, 28] or [N, 784], received {shape}")
    if shape[0] > max_images:
        raise PayloadTooLarge(f"{shape[0]} images, more than the limit of {max_images} per request")
    return as_batch(values.reshape(shape).astype(values.dtype.newbyteorder("="), copy=False))


def _output_specs(raw: Any, model: LoadedModel, binary_default: bool) -> list[OutputSpec] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise InvalidRequest("outputs must be a list of objects")
    known = output_names(model)
    names = [item.get("name") for item in raw]
    if len(set(map(str, names))) != len(names):
        raise InvalidRequest("each output may be asked for once")
    specs = []
    for item in raw:
        name, parameters = item.get("name"), _parameters(item, f"output {brief(item.get('name'))}")
        if name not in known:
            raise InvalidRequest(
                f"unknown output {brief(name)}; model {model.name!r} gives {', '.join(known)}"
            )
        classification = parameters.get("classification")
        if classification is not None:
            _check_classification(classification)
            if name != "probabilities":
                raise InvalidRequest("classification applies to the 'probabilities' output")
        specs.append(OutputSpec(name, bool(parameters.get("binary_data", binary_default)), classification))
    return specs


def _check_classification(value: Any) -> None:
    """The classification extension's k, on the request or on an output: a positive integer."""
    if not is_positive_int(value):
        raise InvalidRequest(f"classification must be a positive integer, received {brief(value)}")


def encode_infer(model: LoadedModel, request: InferRequest, inference: Inference) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the length of its JSON header."""
    specs = request.outputs or [OutputSpec(name, request.binary_output) for name in output_names(model)]
    classification = request.parameters.get("classification")
    if request.outputs is None and is_int(classification):
        specs = [OutputSpec("probabilities", request.binary_output, classification)]
    outputs, chunks = [], []
    for spec in specs:
        tensor = _output_tensor(model, spec, inference)
        if spec.binary:
            data = _binary(tensor["datatype"], tensor.pop("data"))
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = tensor["data"].reshape(-1).tolist()
        outputs.append(tensor)
    document: dict[str, Any] = {
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": outputs,
    }
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _output_tensor(model: LoadedModel, spec: OutputSpec, inference: Inference) -> dict[str, Any]:
    probabilities = inference.probabilities.astype(np.float32, copy=False)
    if spec.classification is not None:
        k = min(spec.classification, probabilities.shape[1])
        order = inference.rank(k)
        labels = [
            [f"{probabilities[row, i]:.6f}:{i}:{model.class_names[i]}" for i in ids]
            for row, ids in enumerate(order.tolist())
        ]
        return {"name": spec.name, "datatype": "BYTES", "shape": [len(labels), k], "data": np.array(labels)}
    if spec.name == "probabilities":
        return {
            "name": spec.name,
            "datatype": "FP32",
            "shape": list(probabilities.shape),
            "data": probabilities,
        }
    if inference.ood_scores is None or inference.ood_flags is None:
        raise InvalidRequest(f"version {model.version} of {model.name!r} has no {spec.name!r} output")
    if spec.name == "ood_score":
        scores = inference.ood_scores.astype(np.float32)
        return {"name": spec.name, "datatype": "FP32", "shape": [len(scores)], "data": scores}
    flags = inference.ood_flags
    return {"name": spec.name, "datatype": "BOOL", "shape": [len(flags)], "data": flags}


def _binary(datatype: str, data: np.ndarray) -> bytes:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then its bytes
        parts = []
        for item in data.reshape(-1).tolist():
            encoded = str(item).encode()
            parts.append(len(encoded).to_bytes(4, "little") + encoded)
        return b"".join(parts)
    if datatype == "BOOL":
        return data.astype(np.bool_).tobytes()
    return np.ascontiguousarray(data, dtype=DATATYPES[datatype]).tobytes()
