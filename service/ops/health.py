"""Liveness, readiness, the Prometheus endpoint and its JSON summary for the page: cheap, never
authenticated, GET or HEAD (health checkers use both)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response

from service.deps import DataPlaneDep, require_ready
from service.openapi import ModelRef, error_responses
from service.services import services

router = APIRouter(tags=["operations"])


class Ready(BaseModel):
    status: Literal["ready"]
    model: ModelRef  # MODEL_NAME's served version
    models: list[ModelRef]  # every served model's, MODEL_NAME first


@router.head("/health", include_in_schema=False)
@router.get("/health", summary="Liveness: 200 while the process works")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.head("/health/ready", include_in_schema=False)
@router.get(
    "/health/ready",
    summary="Readiness: 200 once every served model has a version loaded and warmed up",
    response_model=Ready,
    responses=error_responses(503),
)
async def ready(request: Request, dataplane: DataPlaneDep) -> dict[str, object]:
    await require_ready(request)
    served = [dataplane.served(name) for name in dataplane.managers]
    return {
        "status": "ready",
        "model": {"name": served[0].name, "version": served[0].version},
        "models": [{"name": model.name, "version": model.version} for model in served],
    }


@router.head("/metrics", include_in_schema=False)
@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(services(request).metrics.exposition()), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", summary="Totals for the page's live charts: inference requests, latency, predictions")
async def stats(request: Request) -> dict[str, Any]:
    return {"time": time.time(), **services(request).metrics.summary()}
