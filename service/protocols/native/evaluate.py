"""POST /evaluate: loss, accuracy, calibration (ECE, reliability bins), OOD share, per-class metrics
and the confusion matrix on labelled images.

Evaluations are admitted MAX_EVALUATIONS at a time (503 with Retry-After beyond), run through the
request batcher in batches of MAX_BATCH_IMAGES (so /predict requests keep their turn between them)
and end at the request deadline (504). The Fashion-MNIST test set is read once, on first use, and
shared by every evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from core.datasets import FASHION_MNIST_CLASSES, Split
from core.evaluation import evaluate_probabilities, reliability_bins
from core.preprocessing import InvertMode
from service.deps import admit, require_api_key
from service.errors import InvalidRequest, Overloaded, brief
from service.http.bodies import decode_body, media_type_of
from service.http.validate import digits, is_int, is_positive_int
from service.inference.model import LoadedModel
from service.openapi import error_responses
from service.protocols.native.schemas import (
    EvaluateRequest,
    EvaluateResponse,
    image_body_doc,
)
from service.protocols.native.testset import TestSet
from service.services import services

router = APIRouter(tags=["inference"], dependencies=[Depends(require_api_key)])
JSON_FIELDS = frozenset({"labels", "dataset", "limit"})


@router.post(
    "/evaluate",
    summary="Evaluate the served model on labelled images",
    description=(
        'JSON `{"instances": [...], "labels": [...]}`, image files with a `labels` form field '
        '(comma-separated class ids or names, one per file), or `{"dataset": "test"}` for the '
        "Fashion-MNIST test set (optionally `limit`)."
    ),
    response_model=EvaluateResponse,
    responses=error_responses(400, 401, 404, 408, 413, 415, 422, 503, 504),
    openapi_extra=image_body_doc(EvaluateRequest),
)
async def evaluate(request: Request, invert: InvertMode = Query("auto")) -> Response:
    shared = services(request)
    admission = shared.evaluations
    if admission.locked():  # refused before the body is read
        shared.metrics.rejected.labels("evaluations_busy").inc()
        running = shared.settings.max_evaluations
        raise Overloaded(f"{running} evaluations are running; retry shortly", headers={"Retry-After": "2"})
    async with admission:
        content_type = request.headers.get("content-type", "")
        media_type = media_type_of(content_type)  # 415 before the body is read
        admitted = await admit(request)
        model, deadline = admitted.model, admitted.deadline
        decoded = await decode_body(
            admitted.body,
            content_type,
            media_type,
            shared.limits,
            invert,
            shared.decode_pool,
            deadline,
            json_fields=JSON_FIELDS,
        )
        split = await _labelled_split(shared.test_set, model, decoded.images, decoded.fields)
        inference = await shared.dataplane.infer_chunked(model, split.images, deadline)
    metrics, matrix = evaluate_probabilities(inference.probabilities, split.labels, model.class_names)
    flags = inference.ood_flags
    body = {
        "model": {"name": model.name, "version": model.version},
        **metrics.model_dump(),
        "reliability": [b.model_dump() for b in reliability_bins(inference.probabilities, split.labels)],
        "ood_flagged": float(flags.mean()) if flags is not None else None,
        "class_names": model.class_names,
        "confusion_matrix": matrix.tolist(),
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def _labelled_split(
    test_set: TestSet, model: LoadedModel, images: np.ndarray, fields: dict[str, Any]
) -> Split:
    if fields.get("dataset") is not None:
        if model.class_names != FASHION_MNIST_CLASSES:
            raise InvalidRequest("the served model's classes are not Fashion-MNIST's", code="invalid_dataset")
        if fields["dataset"] != "test":
            raise InvalidRequest(
                f"unknown dataset {brief(fields['dataset'])}; the only one is 'test'", code="invalid_dataset"
            )
        limit = fields.get("limit")
        if limit is not None and not is_positive_int(limit):
            raise InvalidRequest(f"limit must be a positive integer, received {brief(limit)}")
        return (await test_set.get()).head(limit)
    if len(images):
        return Split(images, parse_labels(fields.get("labels"), len(images), model.class_names))
    raise InvalidRequest(
        "send instances (or image files) with labels, or a dataset", code="missing_instances"
    )


def parse_labels(raw: Any, count: int, class_names: list[str]) -> np.ndarray:
    """Labels as a JSON list or a comma-separated string of class ids or class names."""
    if raw is None:
        raise InvalidRequest("labels are required, one per image", code="missing_labels")
    if isinstance(raw, str):
        raw = _label_list(raw)
    if not isinstance(raw, list) or len(raw) != count:
        received = len(raw) if isinstance(raw, list) else type(raw).__name__
        raise InvalidRequest(
            f"expected {count} labels, one per image, received {received}", code="invalid_labels"
        )
    return np.asarray([_class_id(label, class_names) for label in raw], dtype=np.int64)


def _label_list(raw: str) -> Any:
    if not raw.lstrip().startswith("["):
        return [part.strip() for part in raw.split(",")]
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"labels are not a valid JSON list ({exc})", code="invalid_labels") from exc


def _class_id(label: Any, class_names: list[str]) -> int:
    if isinstance(label, str) and (number := digits(label.strip(), 9)) is not None:
        label = number
    if is_int(label) and 0 <= label < len(class_names):
        return label
    if isinstance(label, str) and label in class_names:
        return class_names.index(label)
    raise InvalidRequest(
        f"label {brief(label)} is not a class: use 0-{len(class_names) - 1} or one of {class_names}",
        code="invalid_labels",
    )
