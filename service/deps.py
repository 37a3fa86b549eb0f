"""The dependencies routes share, as named aliases; what they return is the app's Services.

They are all `async def`: FastAPI runs a plain `def` dependency in a worker thread, a hop that costs
more than the whole inference of a one-image request.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import NotFound, NotReady, Unauthorized, brief
from service.http.bodies import read_body
from service.http.validate import digits
from service.inference.dataplane import DataPlane
from service.inference.model import LoadedModel
from service.services import services


async def get_dataplane(request: Request) -> DataPlane:
    return services(request).dataplane


async def require_ready(request: Request) -> None:
    """NotReady while a served model has no version, or (WORKERS > 1) a worker has not loaded its own."""
    found = services(request)
    waiting = found.dataplane.waiting()
    if waiting:
        raise NotReady(f"no version loaded yet, or its store watcher restarting, for {', '.join(waiting)}")
    group = found.workers
    if group is not None and (ready := group.ready_count()) < group.size:
        raise NotReady(f"{ready} of {group.size} workers have loaded their models")


async def get_model(request: Request) -> LoadedModel:
    """The default model's version serving this request, fixed when it starts (a swap never changes it)."""
    return services(request).dataplane.served()


async def require_api_key(request: Request) -> None:
    """With API_KEY set: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared in constant time."""
    expected = services(request).settings.api_key
    if expected is None:
        return
    supplied = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if supplied is None and authorization[:7].lower() == "bearer ":
        supplied = authorization[7:].strip()
    if supplied is None or not hmac.compare_digest(supplied.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("a valid API key is required", headers={"WWW-Authenticate": "Bearer"})


async def require_admin(request: Request) -> None:
    """Admin endpoints exist only when an API key is configured, and need it."""
    if services(request).settings.api_key is None:
        raise NotFound("admin endpoints are disabled: set API_KEY to enable them", code="admin_disabled")
    await require_api_key(request)


def version_number(raw: str) -> int:
    """A version from a path; 404 for anything but a plain number."""
    number = digits(raw, 9)
    if not number:
        raise NotFound(f"{brief(raw)} is not a version number", code="version_not_found")
    return number


@dataclass(frozen=True)
class Admitted:
    model: LoadedModel
    body: bytes
    deadline: float  # event-loop time: REQUEST_TIMEOUT_S after the whole body arrived, as for /predict


async def admit(request: Request, name: str | None = None, version: int | None = None) -> Admitted:
    """An inference request's start, in every protocol: room in the model's queue (503 before the body
    is read), the model and version (404; the default model's served one when not named), the body
    within MAX_BODY_BYTES, and the deadline, REQUEST_TIMEOUT_S from the body's arrival (computed here
    only)."""
    found = services(request)
    found.dataplane.check_capacity(name)
    model = await found.dataplane.model(name, version)
    body = await read_body(request, found.settings.max_body_bytes)
    return Admitted(model, body, asyncio.get_running_loop().time() + found.settings.request_timeout_s)


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
