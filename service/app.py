"""The application factory: builds the app around settings; the model loads in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service.batching import MicroBatcher
from service.config import Settings
from service.decoding import Limits
from service.errors import install_error_handlers
from service.loader import ModelManager
from service.metrics import Metrics
from service.middleware import BodyBudgetMiddleware, ObservabilityMiddleware
from service.routes import admin, evaluate, health, model, predict


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = ModelManager(settings, metrics)
        batcher = MicroBatcher(
            metrics,
            max_batch_images=settings.max_batch_images,
            max_queue_images=settings.max_queue_images,
            timeout_s=settings.request_timeout_s,
            inline_max_images=settings.inline_max_images,
        )
        app.state.manager, app.state.batcher = manager, batcher
        batcher.start()
        # The first pass loads the current version; readiness reports 503 until it has.
        watcher = asyncio.create_task(manager.watch(settings.poll_interval_s), name="store-watcher")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await batcher.stop()

    app = FastAPI(
        title="Fashion-MNIST classifier",
        summary="Class probabilities for 28x28 grayscale images, served from a versioned model store.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.limits = Limits(
        max_body_bytes=settings.max_body_bytes,
        max_instances=settings.max_instances,
        max_bulk_instances=settings.max_bulk_instances,
        max_image_pixels=settings.max_image_pixels,
    )
    install_error_handlers(app)
    for router in (predict.router, evaluate.router, health.router, model.router, admin.router):
        app.include_router(router)
    app.add_middleware(BodyBudgetMiddleware, budget_bytes=settings.max_inflight_body_bytes, metrics=metrics)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)  # outermost: sees every response
    return app
