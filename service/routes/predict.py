"""POST /predict: class probabilities for one or many images, in request order."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from core.preprocessing import InvertMode
from service.decoding import decode_request
from service.deps import BatcherDep, LimitsDep, ModelDep, require_api_key
from service.errors import InvalidRequest
from service.loader import LoadedModel
from service.schemas import PredictRequest, PredictResponse, error_responses, image_body_doc

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])


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
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
    openapi_extra=image_body_doc(PredictRequest),
)
async def predict(
    request: Request,
    model: ModelDep,
    batcher: BatcherDep,
    limits: LimitsDep,
    invert: InvertMode = Query(
        "auto", description="Invert image uploads: auto (dark-on-light only), true, false."
    ),
    top_k: int | None = Query(None, ge=1, description="Also list the k most likely classes per image."),
) -> Response:
    decoded = await decode_request(request, limits, invert)
    if not len(decoded.images):
        raise InvalidRequest("instances is required", code="missing_instances")
    probabilities = await batcher.predict(model, decoded.images)
    return Response(orjson.dumps(prediction_body(model, probabilities, top_k)), media_type="application/json")


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
