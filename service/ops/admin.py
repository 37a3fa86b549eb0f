"""Operator endpoints (need API_KEY; absent without one): reload now, list store versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.deps import DataPlaneDep, require_admin
from service.openapi import error_responses

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 404),
)


@router.post("/reload", summary="Check the store now and swap to the promoted version if it passes")
async def reload(dataplane: DataPlaneDep, model: str | None = None) -> dict[str, Any]:
    outcome = await dataplane.reload(model)
    return {"served_version": outcome.served_version, "changed": outcome.changed, "error": outcome.error}


@router.get("/versions", summary="Versions in the store with their metrics; which is promoted and served")
async def versions(dataplane: DataPlaneDep, model: str | None = None) -> dict[str, Any]:
    return await dataplane.version_table(model)
