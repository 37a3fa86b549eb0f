"""What the routes use, built once per app: the settings, the metrics, the worker group, the access
log, and (from the lifespan, which has the event loop) the data plane, the decode pool, the evaluation
slots and the test set. Reached through one typed accessor, `services(request)`, instead of attributes
of app.state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp

from service.http.bodies import Limits
from service.http.offload import DecodePool
from service.inference.dataplane import DataPlane
from service.logs import AccessLog
from service.metrics import Metrics
from service.protocols.native.testset import TestSet
from service.settings import Settings
from service.workers import WorkerGroup


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    workers: WorkerGroup | None  # None unless this process is one of WORKERS > 1
    access_log: AccessLog = field(default_factory=AccessLog)  # enabled by LOG_LEVEL, read once here
    dataplane: DataPlane = field(init=False)
    decode_pool: DecodePool = field(init=False)
    evaluations: asyncio.Semaphore = field(init=False)  # MAX_EVALUATIONS slots
    test_set: TestSet = field(init=False)

    @property
    def limits(self) -> Limits:
        return self.settings  # the decoding bounds are settings fields

    def start(self) -> None:
        """In the lifespan: build what needs the event loop, and start following the store."""
        self.dataplane = DataPlane(self.settings, self.metrics)
        self.decode_pool = DecodePool(self.settings.decode_threads)
        self.evaluations = asyncio.Semaphore(self.settings.max_evaluations)
        self.test_set = TestSet(self.settings.fashion_mnist_dir)
        self.dataplane.start()
        self.access_log.start()

    async def stop(self) -> None:
        await self.dataplane.stop()
        self.decode_pool.shutdown()
        self.access_log.stop()  # every request has ended: their lines are all buffered


def services_of(app: ASGIApp) -> Services:
    found: Services = app.state.services  # type: ignore[attr-defined]
    return found


def services(request: Request) -> Services:
    return services_of(request.app)
