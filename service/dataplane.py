"""The data plane: every served model by name and version, and inference through its own batcher.

Protocol adapters (/predict and /evaluate, TF Serving's /v1, the Open Inference Protocol's /v2) decode
a request, ask the data plane for a model and run images through it, then encode the answer in their
own shape. Model lookup, readiness, batching, metrics and the loading of explicit versions happen
here, once, whichever protocol a request came in by.

Each served model (MODEL_NAME and MODELS) has a ModelManager that follows its promoted version and a
MicroBatcher of its own, so a busy model queues behind itself, never in front of another. A version
asked for by number is loaded on first use (off the event loop, verified like any other) and kept
among the MAX_LOADED_VERSIONS most recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

import numpy as np

from core.engines import EngineError
from core.store import StoreError
from service.batching import MicroBatcher
from service.config import Settings
from service.errors import NotFound, NotReady
from service.loader import IncompatibleModel, Inference, LoadedModel, ModelManager
from service.metrics import Metrics

VersionKey = tuple[str, int]


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.default_name = settings.model_name
        self.managers = {name: ModelManager(settings, metrics, name) for name in settings.served_models}
        self.batchers = {
            name: MicroBatcher(
                metrics,
                model=name,
                max_batch_images=settings.max_batch_images,
                max_queue_images=settings.max_queue_images,
                timeout_s=settings.request_timeout_s,
                inline_max_images=settings.inline_max_images,
            )
            for name in self.managers
        }
        self.max_loaded_versions = settings.max_loaded_versions
        self._explicit: OrderedDict[VersionKey, LoadedModel] = OrderedDict()
        self._loading: dict[VersionKey, asyncio.Task[LoadedModel]] = {}
        self._watchers: list[asyncio.Task[None]] = []

    # ---- life cycle ----

    def start(self, poll_interval_s: float) -> None:
        for name, manager in self.managers.items():
            self.batchers[name].start()
            # The first pass loads the promoted version; readiness reports 503 until every model has one.
            self._watchers.append(asyncio.create_task(manager.watch(poll_interval_s), name=f"watch-{name}"))

    async def stop(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for batcher in self.batchers.values():
            await batcher.stop()
        for manager in self.managers.values():
            manager.close()

    # ---- lookup ----

    @property
    def ready(self) -> bool:
        return all(manager.current is not None for manager in self.managers.values())

    def manager(self, name: str) -> ModelManager:
        manager = self.managers.get(name)
        if manager is None:
            served = ", ".join(self.managers)
            raise NotFound(f"model {name!r} is not served here; served: {served}", code="model_not_found")
        return manager

    def current(self, name: str | None = None) -> LoadedModel:
        """The version serving this request, fixed when it starts, so a swap never changes it midway."""
        manager = self.manager(name or self.default_name)
        model = manager.current
        if model is None:
            raise NotReady(f"model {manager.name!r} has no version loaded yet; see /health/ready")
        return model

    async def model(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The promoted (or pinned) version, or the version asked for, loaded on first use."""
        current = self.current(name)
        if version is None or version == current.version:
            return current
        key = (current.name, version)
        cached = self._explicit.get(key)
        if cached is not None:
            self._explicit.move_to_end(key)
            return cached
        task = self._loading.get(key)
        if task is None:  # one load per version, however many requests ask for it meanwhile
            task = asyncio.create_task(self.managers[current.name].load(version), name=f"load-{key}")
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            loaded = await asyncio.shield(task)
        except (StoreError, EngineError, IncompatibleModel) as exc:
            raise NotFound(
                f"model {current.name!r} version {version} cannot be served: {exc}", code="version_not_found"
            ) from None
        self._remember(key, loaded)
        return loaded

    def _remember(self, key: VersionKey, loaded: LoadedModel) -> None:
        if self.max_loaded_versions == 0:
            return
        self._explicit[key] = loaded
        self._explicit.move_to_end(key)
        while len(self._explicit) > self.max_loaded_versions:
            self._explicit.popitem(last=False)

    def loaded_versions(self, name: str) -> list[int]:
        """The versions of a model that answer without loading: the promoted one and the cached ones."""
        current = self.managers[name].current
        versions = {v for (model, v) in self._explicit if model == name}
        if current is not None:
            versions.add(current.version)
        return sorted(versions)

    # ---- inference ----

    def check_capacity(self, name: str | None = None) -> None:
        """Refuse at once, before a body is read, when the model's queue is already full."""
        self.batchers[self.manager(name or self.default_name).name].check_capacity()

    async def infer(self, model: LoadedModel, images: np.ndarray, deadline: float | None = None) -> Inference:
        return await self.batchers[model.name].predict(model, images, deadline)
