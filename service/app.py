"""The application factory: builds the app around settings; the model loads in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import __version__
from service.errors import install_error_handlers
from service.http.middleware import BodyGuardMiddleware, ObservabilityMiddleware
from service.metrics import Metrics
from service.ops import admin, docs, health, models, ui
from service.protocols.native import evaluate, predict
from service.protocols.oip import routes as oip
from service.protocols.tfserving import routes as tfserving
from service.services import Services
from service.settings import Settings
from service.workers import WorkerGroup


def create_app(settings: Settings) -> FastAPI:
    workers = WorkerGroup.from_environment(settings.worker_count)  # None unless this is one of WORKERS > 1
    metrics = Metrics(workers.folder if workers else None)

    services = Services(settings, metrics, workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        tasks = (
            []
            if workers is None
            else [
                asyncio.create_task(workers.announce_ready(services.dataplane.waiting)),
                asyncio.create_task(workers.follow_supervisor()),
            ]
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await services.stop()

    app = FastAPI(
        title="Fashion-MNIST classifier",
        summary="Class probabilities for 28x28 grayscale images, served from a versioned model store.",
        version=__version__,
        lifespan=lifespan,
        # /docs is service/ops/docs.py's, from a package (FastAPI's loads Swagger UI from a CDN);
        # one documentation page is enough, so ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
        # The service has its own telemetry: Prometheus /metrics and a JSON access log with request ids.
        # FastAPI's OpenTelemetry hooks look up the global providers on every request, configured or
        # not: about 6 % of a one-image request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services  # the one attribute: routes reach it through services(request)
    install_error_handlers(app)
    # The inference routes first: routes are matched in order, and these are the hot paths.
    routers = (predict, oip, tfserving, evaluate, health, models, admin, ui, docs)
    for router in (module.router for module in routers):
        app.include_router(router)
    app.include_router(oip.repository)
    app.add_middleware(
        BodyGuardMiddleware,
        budget_bytes=settings.max_inflight_body_bytes,
        timeout_s=settings.body_timeout_s,
        min_rate=settings.min_body_rate,
        metrics=metrics,
    )
    # Outermost: sees every response.
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, access_log=services.access_log)
    return app
