"""The served models, their versions' metadata and the figures each version carries (read-only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from service.deps import DataPlaneDep, ModelDep, version_number
from service.inference.model import LoadedModel
from service.openapi import error_responses

router = APIRouter(tags=["model"])
PRIVATE_TRAINING_KEYS = frozenset({"dataset_source"})


@router.head("/model", include_in_schema=False)
@router.get(
    "/model",
    summary="Metadata of the served version",
    responses=error_responses(503),
)
async def default_model(model: ModelDep) -> dict[str, Any]:
    return public_metadata(model)


@router.get("/models", summary="The served models: name, served version, loaded versions, classes")
async def served_models(dataplane: DataPlaneDep) -> dict[str, Any]:
    rows = []
    for name, model in dataplane.served_versions().items():
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


@router.get(
    "/models/{name}",
    summary="Metadata of a served model's served version",
    responses=error_responses(404, 503),
)
async def named_model(name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    model = dataplane.served(name)
    return public_metadata(model)


@router.get(
    "/models/{name}/versions",
    summary="The store's versions of a served model with their metrics; which is promoted and served",
    responses=error_responses(404, 503),
)
async def versions(name: str, dataplane: DataPlaneDep) -> dict[str, Any]:
    return await dataplane.version_table(name)


@router.get(
    "/models/{name}/versions/{version}/figures/{figure}",
    summary="A version's figure as PNG: learning_curves.png or reliability.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 503)},
)
async def figure(name: str, version: str, figure: str, dataplane: DataPlaneDep) -> Response:
    png = await dataplane.figure(name, version_number(version), figure)
    # Versions are immutable: a figure never changes under its URL.
    cache = {"Cache-Control": "public, max-age=86400, immutable"}
    return Response(png, media_type="image/png", headers=cache)


def public_metadata(model: LoadedModel) -> dict[str, Any]:
    """The version's metadata and the engine serving it, without what describes the server rather than
    the model: library versions and where the training data lay. The version is the folder's, which is
    what serves."""
    metadata = {"engine": model.engine.kind, **model.metadata.model_dump(mode="json", exclude={"framework"})}
    metadata["training"] = {k: v for k, v in metadata["training"].items() if k not in PRIVATE_TRAINING_KEYS}
    metadata["version"] = model.version
    return metadata
