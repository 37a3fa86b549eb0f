"""TF Serving's REST API (= KServe V1, /v1): a thin adapter over the data plane.

`POST /v1/models/{name}[/versions/{v}]:predict` and `:classify`, model status and metadata.
Decoding and encoding are codec.py's; b64 images go through the upload conversion in the
decode pool. Errors are {"error": "message"} (service/errors.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import DataPlaneDep, admit, require_api_key, version_number
from service.errors import NotFound, brief
from service.http.bodies import convert_uploads, open_images, parse_json
from service.openapi import path_parameters
from service.protocols.tfserving import codec
from service.services import services

router = APIRouter(prefix="/v1/models", tags=["TF Serving REST (KServe V1)"])
VERBS = {"predict": "instances", "classify": "examples"}


# The hot paths, like /predict: no dependency injection or parameter validation, which cost more per
# request than a one-image inference.
@router.post("/{target}", summary="name:predict or name:classify", openapi_extra=path_parameters("target"))
async def run_served(request: Request) -> Response:
    await require_api_key(request)
    name, verb = _split(request.path_params["target"])
    return await _run(request, name, None, verb)


@router.post(
    "/{name}/versions/{target}",
    summary="version:predict or version:classify",
    openapi_extra=path_parameters("name", "target"),
)
async def run_version(request: Request) -> Response:
    await require_api_key(request)
    version, verb = _split(request.path_params["target"])
    return await _run(request, request.path_params["name"], version_number(version), verb)


@router.get("/{name}", summary="Version status of the served version")
@router.get("/{name}/versions/{version}", summary="Status of a version (loads it)")
async def status(dataplane: DataPlaneDep, name: str, version: int | None = None) -> dict[str, Any]:
    model = await dataplane.model(name, version)
    return codec.version_status(model.version)


@router.get("/{name}/metadata", summary="Signature of the served version")
@router.get("/{name}/versions/{version}/metadata", summary="Signature of a version")
async def metadata(dataplane: DataPlaneDep, name: str, version: int | None = None) -> dict[str, Any]:
    return codec.metadata(await dataplane.model(name, version))


def _split(target: str) -> tuple[str, str]:
    head, _, verb = target.rpartition(":")
    if not head or verb not in VERBS:
        raise NotFound(f"unknown method {brief(target)}: use :predict or :classify")
    return head, verb


async def _run(request: Request, name: str, version: int | None, verb: str) -> Response:
    shared = services(request)
    dataplane = shared.dataplane
    admitted = await admit(request, name, version)
    model, body, deadline, limits = admitted.model, admitted.body, admitted.deadline, shared.limits

    def parse(_: object) -> codec.V1Request:
        document = parse_json(body, limits.max_instances)
        return codec.parse_request(document, VERBS[verb], limits.max_instances, body)

    parsed = await shared.decode_pool.offload(parse, deadline, size_bytes=len(body))
    if parsed.pixels is not None:
        images = parsed.pixels
    else:  # image files: converted as uploads are
        files = [(f"instance {i}", data, None) for i, data in enumerate(parsed.files or [])]
        images = await shared.decode_pool.run(
            lambda cancelled: convert_uploads(open_images(files, limits), "auto", cancelled), deadline
        )
    inference = await dataplane.infer(model, images, deadline)
    answer = (
        codec.predictions(model, inference, parsed.row_format)
        if verb == "predict"
        else codec.classification(model, inference)
    )
    return Response(orjson.dumps(answer), media_type="application/json")
