"""POST /evaluate: loss, accuracy, per-class metrics and confusion matrix on labelled images."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from core.datasets import FASHION_MNIST_CLASSES, Split, load_fashion_mnist
from core.evaluation import evaluate_probabilities
from core.preprocessing import InvertMode
from service.decoding import decode_request
from service.deps import LimitsDep, ModelDep, SettingsDep, require_api_key
from service.errors import InvalidRequest
from service.schemas import EvaluateRequest, EvaluateResponse, error_responses, image_body_doc

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])


@router.post(
    "/evaluate",
    summary="Evaluate the served model on labelled images",
    description=(
        'JSON `{"instances": [...], "labels": [...]}`, image files with a `labels` form field '
        '(comma-separated class ids or names, one per file), or `{"dataset": "test"}` for the '
        "Fashion-MNIST test set (optionally `limit`)."
    ),
    response_model=EvaluateResponse,
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
    openapi_extra=image_body_doc(EvaluateRequest),
)
async def evaluate(
    request: Request,
    model: ModelDep,
    limits: LimitsDep,
    settings: SettingsDep,
    invert: InvertMode = Query("auto"),
) -> Response:
    decoded = await decode_request(request, limits, invert)
    if decoded.fields.get("dataset") is not None:
        if model.class_names != FASHION_MNIST_CLASSES:
            raise InvalidRequest("the served model's classes are not Fashion-MNIST's", code="invalid_dataset")
        split = await _named_dataset(request, decoded.fields, settings.fashion_mnist_dir)
    elif len(decoded.images):
        split = Split(
            decoded.images, parse_labels(decoded.fields.get("labels"), len(decoded.images), model.class_names)
        )
    else:
        raise InvalidRequest(
            "send instances (or image files) with labels, or a dataset", code="missing_instances"
        )
    # Evaluation batches are large: run them off the event loop, outside the request batcher.
    probabilities = await run_in_threadpool(model.engine.predict, split.images.astype(np.float32))
    metrics, matrix = evaluate_probabilities(probabilities, split.labels, model.class_names)
    body = {
        "model": {"name": model.metadata.name, "version": model.version},
        **metrics.model_dump(),
        "class_names": model.class_names,
        "confusion_matrix": matrix.tolist(),
    }
    return Response(orjson.dumps(body), media_type="application/json")


def parse_labels(raw: Any, count: int, class_names: list[str]) -> np.ndarray:
    """Labels as a JSON list or a comma-separated string of class ids or class names."""
    if raw is None:
        raise InvalidRequest("labels are required, one per image", code="missing_labels")
    if isinstance(raw, str):
        raw = orjson.loads(raw) if raw.lstrip().startswith("[") else [part.strip() for part in raw.split(",")]
    if not isinstance(raw, list) or len(raw) != count:
        received = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise InvalidRequest(
            f"expected {count} labels, one per image, received {received}", code="invalid_labels"
        )
    return np.asarray([_class_id(label, class_names) for label in raw], dtype=np.int64)


def _class_id(label: Any, class_names: list[str]) -> int:
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
        return label
    if isinstance(label, str) and label in class_names:
        return class_names.index(label)
    raise InvalidRequest(
        f"label {label!r} is not a class: use 0-{len(class_names) - 1} or one of {class_names}",
        code="invalid_labels",
    )


async def _named_dataset(request: Request, fields: dict[str, Any], data_dir: Any) -> Split:
    if fields["dataset"] != "test":
        raise InvalidRequest(
            f"unknown dataset {fields['dataset']!r}; the only one is 'test'", code="invalid_dataset"
        )
    limit = fields.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidRequest(f"limit must be a positive integer, received {limit!r}", code="invalid_request")
    state = request.app.state
    if getattr(state, "test_split", None) is None:
        dataset = await asyncio.to_thread(load_fashion_mnist, data_dir, allow_download=False)
        state.test_split = dataset.test
    split: Split = state.test_split
    return split.head(limit)
