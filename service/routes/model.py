"""The served models and their versions' metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import DataPlaneDep, ModelDep
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
async def default_model(model: ModelDep) -> dict[str, Any]:
    return {"engine": model.engine.kind, **public_metadata(model)}


@router.get("/models", summary="The served models: name, served version, loaded versions, classes")
async def served_models(dataplane: DataPlaneDep) -> dict[str, Any]:
    rows = []
    for name, manager in dataplane.managers.items():
        model = manager.served
        rows.append(
            {
                "name": name,
                "default": name == dataplane.default_name,
                "version": model.version if model else None,
                "loaded_versions": dataplane.loaded_versions(name),
                "class_names": model.class_names if model else None,
            }
        )
    return {"models": rows}


def public_metadata(model: LoadedModel) -> dict[str, Any]:
    """The version's metadata without what describes the server rather than the model: library
    versions and where the training data lay. The version is the folder's, which is what serves."""
    metadata = model.metadata.model_dump(mode="json", exclude={"framework"})
    metadata["training"] = {k: v for k, v in metadata["training"].items() if k not in PRIVATE_TRAINING_KEYS}
    metadata["version"] = model.version
    return metadata
