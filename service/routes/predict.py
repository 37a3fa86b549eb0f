"""POST /predict: class probabilities for one or many images, in request order."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from core.preprocessing import InvertMode
from service.decoding import decode_request
from service.deps import get_model, require_api_key
from service.errors import InvalidRequest, brief
from service.loader import LoadedModel
from service.schemas import PredictRequest, PredictResponse, error_responses, image_body_doc

router = APIRouter(tags=["inference"])

QUERY_DOC = [
    {
        "name": "invert",
        "in": "query",
        "required": False,
        "description": "Invert image uploads: auto (only dark-on-light images), true, false.",
        "schema": {"type": "string", "enum": ["auto", "true", "false"], "default": "auto"},
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
        "or `application/x-npy`. Photos are fitted to 28x28 grayscale; `invert` controls whether "
        "dark-on-light images are inverted."
    ),
    response_model=PredictResponse,
    responses=error_responses(400, 401, 408, 413, 415, 422, 503, 504),
    openapi_extra={**image_body_doc(PredictRequest), "parameters": QUERY_DOC},
)
async def predict(request: Request) -> Response:
    # The hot path: no dependency injection or parameter models, which cost more per request than a
    # one-image inference. The same dependency functions are called directly instead.
    await require_api_key(request)
    model = await get_model(request)
    state = request.app.state
    batcher = state.batcher
    batcher.check_capacity()
    invert, top_k = query_options(request)
    decoded = await decode_request(
        request, state.limits, invert, state.decode_pool, timeout_s=state.settings.request_timeout_s
    )
    if not len(decoded.images):
        raise InvalidRequest("instances is required", code="missing_instances")
    probabilities = await batcher.predict(model, decoded.images, decoded.deadline)
    return Response(orjson.dumps(prediction_body(model, probabilities, top_k)), media_type="application/json")


def query_options(request: Request) -> tuple[InvertMode, int | None]:
    if not request.scope["query_string"]:
        return "auto", None
    params = request.query_params
    invert = params.get("invert", "auto")
    if invert not in ("auto", "true", "false"):
        raise InvalidRequest(f"invert must be auto, true or false, received {brief(invert)}")
    raw_top_k = params.get("top_k")
    if raw_top_k is None:
        return invert, None  # type: ignore[return-value]
    # ASCII digits only: "²" and "٣" pass str.isdigit() but not int(); more than 6 digits is never useful.
    if not (0 < len(raw_top_k) <= 6 and raw_top_k.isascii() and raw_top_k.isdigit()) or int(raw_top_k) < 1:
        raise InvalidRequest(f"top_k must be a positive integer, received {brief(raw_top_k)}")
    return invert, int(raw_top_k)  # type: ignore[return-value]


def prediction_body(model: LoadedModel, probabilities: np.ndarray, top_k: int | None) -> dict[str, Any]:
    names = model.class_names
    class_ids = probabilities.argmax(axis=1).tolist()
    confidences = probabilities.max(axis=1).tolist()
    rows = probabilities.tolist()
    predictions: list[dict[str, Any]] = [
        {"class_id": c, "class_name": names[c], "confidence": p, "probabilities": row}
        for c, p, row in zip(class_ids, confidences, rows, strict=True)
    ]
    if top_k:
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k].tolist()
        for prediction, ids, row in zip(predictions, ranked, rows, strict=True):
            prediction["top_k"] = [
                {"class_id": i, "class_name": names[i], "probability": row[i]} for i in ids
            ]
    return {
        "model": {"name": model.metadata.name, "version": model.version},
        "class_names": names,
        "predictions": predictions,
    }
