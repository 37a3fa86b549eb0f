"""POST /predict: class probabilities and OOD flags for one or many images, in request order."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, cast, get_args

import numpy as np
import orjson
from fastapi import APIRouter, Request
from PIL import Image
from starlette.responses import Response

from core.preprocessing import InvertMode
from service.deps import admit, require_api_key
from service.errors import InvalidRequest, brief
from service.http.bodies import decode_body, media_type_of
from service.http.validate import digits
from service.inference.model import Inference, LoadedModel
from service.openapi import error_responses
from service.protocols.native.schemas import PredictRequest, PredictResponse, image_body_doc
from service.services import services

router = APIRouter(tags=["inference"])
INVERT_MODES = get_args(InvertMode)

QUERY_DOC = [
    {
        "name": "invert",
        "in": "query",
        "required": False,
        "description": "Invert image uploads: auto (only dark-on-light images), true, false.",
        "schema": {"type": "string", "enum": list(get_args(InvertMode)), "default": "auto"},
    },
    {
        "name": "include",
        "in": "query",
        "required": False,
        "description": (
            "input: also return, per image, the 28x28 image the model saw (a PNG data URL), after the "
            "conversion of uploads described in the README."
        ),
        "schema": {"type": "string", "enum": ["input"]},
    },
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "Also list the k most likely classes per image.",
        "schema": {"type": "integer", "minimum": 1},
    },
]


@router.post(
    "/predict",
    summary="Classify images",
    description=(
        'Send JSON `{"instances": [...]}` (raw 0-255 pixels, 28x28 nested or 784 flat), image files as '
        "multipart/form-data, one image as `image/*`, or many as `application/octet-stream` (N x 784 uint8) "
        "or `application/x-npy`. Photos are converted as Fashion-MNIST was made from product photos "
        "(background found and trimmed, longest side fitted to 28, negated when the background is light; "
        "`invert` forces the polarity). Every prediction carries an out-of-distribution flag and score."
    ),
    response_model=PredictResponse,
    responses=error_responses(400, 401, 408, 413, 415, 422, 503, 504),
    openapi_extra={**image_body_doc(PredictRequest), "parameters": QUERY_DOC},
)
async def predict(request: Request) -> Response:
    # The hot path: no dependency injection or parameter models, which cost more per request than a
    # one-image inference. The same dependency functions are called directly instead.
    await require_api_key(request)
    shared = services(request)
    options = query_options(request)
    content_type = request.headers.get("content-type", "")
    media_type = media_type_of(content_type)  # 415 before the body is read
    admitted = await admit(request)
    model, deadline = admitted.model, admitted.deadline
    decoded = await decode_body(
        admitted.body, content_type, media_type, shared.limits, options.invert, shared.decode_pool, deadline
    )
    if not len(decoded.images):
        raise InvalidRequest("instances is required", code="missing_instances")
    inference = await shared.dataplane.infer(model, decoded.images, deadline)
    body = prediction_body(model, inference, options.top_k)
    if options.include_input:
        images = decoded.images
        urls = await shared.decode_pool.offload(
            lambda _: [png_data_url(image) for image in images], deadline, items=len(images)
        )
        for prediction, url in zip(body["predictions"], urls, strict=True):
            prediction["input"] = url
    return Response(orjson.dumps(body), media_type="application/json")


@dataclass(frozen=True)
class QueryOptions:
    invert: InvertMode = "auto"
    top_k: int | None = None
    include_input: bool = False


INCLUDABLE = ("input",)


def query_options(request: Request) -> QueryOptions:
    if not request.scope["query_string"]:
        return QueryOptions()
    params = request.query_params
    invert = params.get("invert", "auto")
    if invert not in INVERT_MODES:
        raise InvalidRequest(f"invert must be one of {', '.join(INVERT_MODES)}, received {brief(invert)}")
    include = [
        part.strip() for value in params.getlist("include") for part in value.split(",") if part.strip()
    ]
    unknown = [part for part in include if part not in INCLUDABLE]
    if unknown:
        raise InvalidRequest(f"include may list {', '.join(INCLUDABLE)}; received {brief(unknown[0])}")
    raw_top_k = params.get("top_k")
    top_k = None
    if raw_top_k is not None:
        top_k = digits(raw_top_k, 6)  # over 6 digits is never useful
        if not top_k:
            raise InvalidRequest(f"top_k must be a positive integer, received {brief(raw_top_k)}")
    return QueryOptions(cast(InvertMode, invert), top_k, "input" in include)


def png_data_url(image: np.ndarray) -> str:
    """A 28x28 model input as a grayscale PNG data URL (about 0.5 KB)."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prediction_body(model: LoadedModel, inference: Inference, top_k: int | None) -> dict[str, Any]:
    names = model.class_names
    probabilities = inference.probabilities
    class_ids = probabilities.argmax(axis=1).tolist()
    confidences = probabilities.max(axis=1).tolist()
    rows = probabilities.tolist()
    count = len(rows)
    flags = inference.ood_flags.tolist() if inference.ood_flags is not None else [None] * count
    scores = inference.ood_scores.tolist() if inference.ood_scores is not None else [None] * count
    predictions: list[dict[str, Any]] = [
        {
            "class_id": c,
            "class_name": names[c],
            "confidence": p,
            "probabilities": row,
            "ood": o,
            "ood_score": s,
        }
        for c, p, row, o, s in zip(class_ids, confidences, rows, flags, scores, strict=True)
    ]
    if top_k:
        ranked = inference.rank(top_k).tolist()
        for prediction, ids, row in zip(predictions, ranked, rows, strict=True):
            prediction["top_k"] = [
                {"class_id": i, "class_name": names[i], "probability": row[i]} for i in ids
            ]
    return {
        "model": {"name": model.name, "version": model.version},
        "class_names": names,
        "predictions": predictions,
    }
