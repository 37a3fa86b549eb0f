"""The data plane: every served model by name and version, and inference through its own batcher.

Protocol adapters (/predict and /evaluate, TF Serving's /v1, the Open Inference Protocol's /v2) decode
a request, ask the data plane for a model and run images through it, then encode the answer in their
own shape. Model lookup, readiness, batching, metrics and the loading of explicit versions happen
here, once, whichever protocol a request came in by; so do the operations' reads of the store (version
tables, figures, the repository's index and loads), each in its model's store thread. Routes use
nothing else of the inference plane.

Each served model (MODEL_NAME and MODELS) has a ModelManager that follows its promoted version and a
MicroBatcher of its own, so a busy model queues behind itself, never in front of another. A version
asked for by number is loaded on first use (off the event loop, verified like any other) and kept
among the MAX_LOADED_VERSIONS most recently used; one that fails is refused from the manager's memory
of failed versions until its backoff is over (versions.py).

A model's store watcher never ends by itself (each pass guards its own failures); should it end all
the same, it is started again after a backoff (WATCH_RESTART_S, doubling up to RETRY_MAX_S), counted
in model_watcher_restarts_total, and readiness answers 503 while it is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from core.store import FIGURE_FILES, VersionNotFound, model_names
from service.errors import NotFound, NotReady, brief
from service.inference.batching import MicroBatcher
from service.inference.model import Inference, LoadedModel
from service.inference.versions import RETRY_MAX_S, ModelManager, ReloadOutcome, VersionRefused
from service.metrics import Metrics
from service.settings import Settings

VersionKey = tuple[str, int]
WATCH_RESTART_S = 1.0  # the first restart of a watcher that ended; then doubling
logger = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.default_name = settings.model_name
        self.managers: dict[str, ModelManager] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.max_loaded_versions = settings.max_loaded_versions
        self._explicit: OrderedDict[VersionKey, LoadedModel] = OrderedDict()
        self._loading: dict[VersionKey, asyncio.Task[LoadedModel]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._watch_restarts: dict[str, int] = {}

    # ---- life cycle ----

    def start(self) -> None:
        for name in self.settings.served_models:
            self.serve(name)

    def serve(self, name: str) -> ModelManager:
        """Start serving a model of the store: its watcher loads the promoted version in the background."""
        if name in self.managers:
            return self.managers[name]
        manager = ModelManager(self.settings, self.metrics, name)  # ValueError for a name that is no folder
        batcher = MicroBatcher(
            self.metrics,
            model=name,
            max_batch_images=self.settings.max_batch_images,
            max_queue_images=self.settings.max_queue_images,
            timeout_s=self.settings.request_timeout_s,
            inline_max_images=self.settings.inline_max_images,
        )
        self.managers[name], self.batchers[name] = manager, batcher
        batcher.start()
        # The first pass loads the promoted version; readiness reports 503 until every model has one.
        self._watch(manager)
        return manager

    def _watch(self, manager: ModelManager) -> None:
        task = asyncio.create_task(manager.watch(self.settings.poll_interval_s), name=f"watch-{manager.name}")
        self._watchers[manager.name] = task
        task.add_done_callback(lambda done: self._watcher_ended(manager, done))

    def _watcher_ended(self, manager: ModelManager, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.managers.get(manager.name) is not manager:
            return  # stopped on purpose (unserve, shutdown)
        restarts = self._watch_restarts.get(manager.name, 0)
        self._watch_restarts[manager.name] = restarts + 1
        delay = min(RETRY_MAX_S, WATCH_RESTART_S * 2**restarts)
        logger.error(
            "store watcher ended; restarting it",
            exc_info=task.exception(),
            extra={"model": manager.name, "restart_in_s": delay},
        )
        self.metrics.watcher_restarts.labels(manager.name).inc()

        def restart() -> None:
            if self.managers.get(manager.name) is manager:
                self._watch(manager)

        asyncio.get_running_loop().call_later(delay, restart)

    async def unserve(self, name: str) -> None:
        """Stop serving a model: requests queued for it get 503, later ones 404."""
        manager, batcher = self.managers.pop(name), self.batchers.pop(name)
        watcher = self._watchers.pop(name)
        self._watch_restarts.pop(name, None)
        watcher.cancel()
        # A watcher that had ended with an error was logged then; its error is not this call's.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await batcher.stop()
        manager.close()
        for key in [key for key in self._explicit if key[0] == name]:
            del self._explicit[key]

    async def stop(self) -> None:
        for name in list(self.managers):
            await self.unserve(name)

    # ---- lookup ----

    def waiting(self) -> list[str]:
        """The served models that have no version loaded yet, or whose store watcher is not running."""
        return [
            name
            for name, manager in self.managers.items()
            if manager.served is None or self._watchers[name].done()
        ]

    def manager(self, name: str) -> ModelManager:
        manager = self.managers.get(name)
        if manager is None:
            served = ", ".join(self.managers)
            raise NotFound(
                f"model {brief(name)} is not served here; served: {served}", code="model_not_found"
            )
        return manager

    def served(self, name: str | None = None) -> LoadedModel:
        """The version serving this request, fixed when it starts, so a swap never changes it midway."""
        manager = self.manager(name or self.default_name)
        model = manager.served
        if model is None:
            raise NotReady(f"model {manager.name!r} has no version loaded yet; see /health/ready")
        return model

    async def model(self, name: str | None = None, version: int | None = None) -> LoadedModel:
        """The promoted (or pinned) version, or the version asked for, loaded on first use."""
        served = self.served(name)
        if version is None or version == served.version:
            return served
        key = (served.name, version)
        cached = self._explicit.get(key)
        if cached is not None:
            self._explicit.move_to_end(key)
            return cached
        task = self._loading.get(key)
        if task is None:  # one load per version, however many requests ask for it meanwhile
            task = asyncio.create_task(self.managers[served.name].load(version), name=f"load-{key}")
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        try:
            loaded = await asyncio.shield(task)
        except (VersionNotFound, VersionRefused) as exc:
            reason = f"model {served.name!r} version {version} cannot be served: {exc}"
            raise NotFound(reason, code="version_not_found") from None
        self._remember(key, loaded)
        return loaded

    def _remember(self, key: VersionKey, loaded: LoadedModel) -> None:
        if self.max_loaded_versions == 0:
            return
        self._explicit[key] = loaded
        self._explicit.move_to_end(key)
        while len(self._explicit) > self.max_loaded_versions:
            self._explicit.popitem(last=False)

    def served_versions(self) -> dict[str, LoadedModel | None]:
        """Every served model's name and the version it serves (None while it has none yet)."""
        return {name: manager.served for name, manager in self.managers.items()}

    # ---- the store, for operations (read in each model's store thread, with its timeout) ----

    async def store_models(self) -> list[str]:
        """Every model of the store, served or not."""
        return await asyncio.to_thread(model_names, self.settings.model_store)

    async def store_versions(self, name: str) -> list[int]:
        manager = self.manager(name)
        return await manager.run_io(manager.store.versions)

    async def version_table(self, name: str | None = None) -> dict[str, Any]:
        """The store's versions of a served model with their metrics; which is promoted and served."""
        manager = self.manager(name or self.default_name)
        return await manager.run_io(manager.version_table)

    async def figure(self, name: str, version: int, figure: str) -> bytes:
        """A version's figure (a PNG); NotFound (figure_not_found) when the version or the figure is
        not there, or the file is not a PNG."""
        manager = self.manager(name)
        try:
            return await manager.run_io(manager.store.read_figure, version, figure)
        except VersionNotFound as exc:
            figures = ", ".join(FIGURE_FILES)
            message = (
                str(exc)  # the version's own reason: missing, not a PNG, a symlink...
                if figure in FIGURE_FILES
                else f"version {version} of {name!r} has no figure {brief(figure)}; figures: {figures}"
            )
            raise NotFound(message, code="figure_not_found") from None

    async def reload(self, name: str | None = None) -> ReloadOutcome:
        """Check the store now and swap to the promoted version if it passes."""
        return await self.manager(name or self.default_name).reload(force=True)

    async def load(self, name: str) -> ReloadOutcome:
        """Serve a model of the store (or reload a served one) now. A load that finds no servable
        version registers nothing: readiness must not wait for that model."""
        if name not in await self.store_models():
            raise NotFound(f"the store has no model {brief(name)}", code="model_not_found")
        newly = name not in self.managers
        outcome = await self.serve(name).reload(force=True)
        if outcome.served_version is None and newly:
            await self.unserve(name)
        return outcome

    def loaded_versions(self, name: str) -> list[int]:
        """The versions of a model that answer without loading: the promoted one and the cached ones."""
        served = self.managers[name].served
        versions = {v for (model, v) in self._explicit if model == name}
        if served is not None:
            versions.add(served.version)
        return sorted(versions)

    # ---- inference ----

    def check_capacity(self, name: str | None = None) -> None:
        """Refuse at once, before a body is read, when the model's queue is already full."""
        self.batchers[self.manager(name or self.default_name).name].check_capacity()

    async def infer(self, model: LoadedModel, images: np.ndarray, deadline: float | None = None) -> Inference:
        return await self.batchers[model.name].predict(model, images, deadline)

    async def infer_chunked(self, model: LoadedModel, images: np.ndarray, deadline: float) -> Inference:
        """Many images (an evaluation) as one batcher job per MAX_BATCH_IMAGES, one after another, so
        other requests interleave."""
        size = self.batchers[model.name].max_batch_images
        parts = [await self.infer(model, images[i : i + size], deadline) for i in range(0, len(images), size)]
        return Inference.concatenate(parts)
