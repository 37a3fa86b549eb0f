"""The served version's metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import ModelDep
from service.loader import LoadedModel
from service.schemas import error_responses

router = APIRouter(tags=["model"])
PRIVATE_TRAINING_KEYS = frozenset({"dataset_source"})


@router.api_route(
    "/model",
    methods=["GET", "HEAD"],
    summary="Metadata of the served version",
    responses=error_responses(503),
)
@router.get("/models/current", include_in_schema=False)
async def current_model(model: ModelDep) -> dict[str, Any]:
    return {"engine": model.engine.kind, **public_metadata(model)}


def public_metadata(model: LoadedModel) -> dict[str, Any]:
    """The version's metadata without what describes the server rather than the model: library
    versions and where the training data lay. The version is the folder's, which is what serves."""
    metadata = model.metadata.model_dump(mode="json", exclude={"framework"})
    metadata["training"] = {k: v for k, v in metadata["training"].items() if k not in PRIVATE_TRAINING_KEYS}
    metadata["version"] = model.version
    return metadata
