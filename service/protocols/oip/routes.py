"""The Open Inference Protocol v2 (KServe V2, Triton's HTTP API): a thin adapter over the data plane.

Decoding and encoding are codec.py's; model lookup, batching and metrics are the data plane's.
Errors are {"error": "message"} (service/errors.py). tritonclient sends binary inputs with no
Content-Type, so the infer route reads the raw body itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service import __version__
from service.deps import DataPlaneDep, admit, require_admin, require_api_key, require_ready, version_number
from service.errors import Conflict, InvalidRequest, NotReady
from service.openapi import path_parameters
from service.protocols.oip import codec
from service.services import services

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
repository = APIRouter(
    prefix="/v2/repository", tags=["open inference protocol v2"], dependencies=[Depends(require_admin)]
)
SERVER = {
    "name": "fashion-serving",
    "version": __version__,
    "extensions": ["binary_tensor_data", "classification", "model_configuration", "model_repository"],
}


@router.post(
    "/models/{name}/infer",
    summary="Inference on the served version",
    openapi_extra=path_parameters("name"),
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    openapi_extra=path_parameters("name", "version"),
)
async def infer(request: Request) -> Response:
    # The hot path, like /predict: no dependency injection or parameter validation, which cost more
    # per request than a one-image inference.
    await require_api_key(request)
    name, raw_version = request.path_params["name"], request.path_params.get("version")
    version = None if raw_version is None else version_number(raw_version)
    shared = services(request)
    dataplane = shared.dataplane
    admitted = await admit(request, name, version)
    model, body, deadline, limits = admitted.model, admitted.body, admitted.deadline, shared.limits
    header_length = request.headers.get(codec.HEADER_LENGTH)
    parsed = await shared.decode_pool.offload(
        lambda _: codec.parse_infer(
            body, header_length, model, limits.max_instances, limits.max_bulk_instances
        ),
        deadline,
        size_bytes=len(body),
    )
    inference = await dataplane.infer(model, parsed.images, deadline)
    content, json_length = codec.encode_infer(model, parsed, inference)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


@router.get("/health/live", summary="Live: 200 while the process works")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Ready: 200 once every served model has a version loaded")
async def ready(request: Request) -> dict[str, bool]:
    await require_ready(request)
    return {"ready": True}


@router.get("", summary="Server metadata and the protocol extensions it supports")
async def server_metadata() -> dict[str, Any]:
    return SERVER


@router.get("/models/{name}", summary="Model metadata (the served version)")
@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version")
async def model_metadata(dataplane: DataPlaneDep, name: str, version: int | None = None) -> dict[str, Any]:
    model = await dataplane.model(name, version)
    return codec.model_metadata(model, await dataplane.store_versions(model.name))


@router.get("/models/{name}/config", summary="Triton's model configuration (the served version)")
@router.get("/models/{name}/versions/{version}/config", summary="Triton's model configuration of a version")
async def model_config(request: Request, name: str, version: int | None = None) -> dict[str, Any]:
    shared = services(request)
    model = await shared.dataplane.model(name, version)
    settings = shared.settings
    return codec.model_config(model, settings.max_instances, settings.max_batch_images)


@router.get("/models/{name}/ready", summary="Whether the model's served version is ready")
@router.get("/models/{name}/versions/{version}/ready", summary="Whether a version is ready (loads it)")
async def model_ready(dataplane: DataPlaneDep, name: str, version: int | None = None) -> dict[str, Any]:
    model = await dataplane.model(name, version)
    return {"name": model.name, "ready": True}


@repository.post("/index", summary="Every model of the store and whether it is served (needs API_KEY)")
async def index(dataplane: DataPlaneDep) -> list[dict[str, Any]]:
    served = dataplane.served_versions()
    rows = []
    for name in await dataplane.store_models():
        if name not in served:
            rows.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded"})
        elif (model := served[name]) is None:
            rows.append({"name": name, "state": "LOADING", "reason": ""})
        else:
            rows.append({"name": name, "version": str(model.version), "state": "READY", "reason": ""})
    return rows


async def one_process(request: Request) -> None:
    """Loading and unloading change what one process serves: with WORKERS > 1 the others would differ."""
    if services(request).workers is not None:
        raise Conflict(
            "with WORKERS > 1 models cannot be loaded or unloaded at run time; list them in MODELS"
        )


@repository.post(
    "/models/{name}/load",
    summary="Serve a model of the store, or reload a served one",
    dependencies=[Depends(one_process)],
)
async def load(dataplane: DataPlaneDep, name: str) -> dict[str, Any]:
    outcome = await dataplane.load(name)
    if outcome.served_version is None:
        raise NotReady(f"model {name!r} has no servable version: {outcome.error}")
    return {"name": name, "load": True, "version": str(outcome.served_version)}


@repository.post(
    "/models/{name}/unload",
    summary="Stop serving a model (not MODEL_NAME)",
    dependencies=[Depends(one_process)],
)
async def unload(dataplane: DataPlaneDep, name: str) -> dict[str, Any]:
    dataplane.manager(name)  # 404 when not served
    if name == dataplane.default_name:
        raise InvalidRequest(f"{name!r} is MODEL_NAME, which /predict serves; it cannot be unloaded")
    await dataplane.unserve(name)
    return {"name": name, "unload": True}
