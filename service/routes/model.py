"""The served version's metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import ModelDep
from service.schemas import error_responses

router = APIRouter(tags=["model"])


@router.get("/model", summary="Metadata of the served version", responses=error_responses(503))
@router.get("/models/current", include_in_schema=False)
async def current_model(model: ModelDep) -> dict[str, Any]:
    return {"engine": model.engine.kind, **model.metadata.model_dump(mode="json")}
