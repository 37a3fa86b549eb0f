"""Which version is served: load, verify and swap versions of the store without dropping requests.

A candidate version is loaded off the event loop, checked (metadata, input shape, classes, engine
parity on the probe batch, which is also the warm-up), then swapped in with one reference
assignment. Requests that started on the old version finish on it. A version that fails is never
served and is not retried until it changes or a reload is forced; the store is never modified here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.engines import Engine, EngineError, load_engine
from core.preprocessing import INPUT_SHAPE
from core.store import ModelMetadata, ModelStore, StoreError
from service.config import Settings
from service.metrics import Metrics

logger = logging.getLogger(__name__)


class IncompatibleModel(Exception):
    """A version whose inputs or classes differ from what this service serves."""


@dataclass(frozen=True)
class LoadedModel:
    version: int
    metadata: ModelMetadata
    engine: Engine
    directory: Path
    loaded_at: float = field(default_factory=time.time)

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names


@dataclass(frozen=True)
class RefreshOutcome:
    served: int | None
    changed: bool
    error: str | None = None


def load_version(
    store: ModelStore, version: int, engine_kind: str, served: LoadedModel | None
) -> LoadedModel:
    """Load and verify one version; raises StoreError, EngineError or IncompatibleModel."""
    metadata = store.read_metadata(version)
    if tuple(metadata.input.shape) != INPUT_SHAPE:
        raise IncompatibleModel(
            f"version {version} takes inputs of shape {metadata.input.shape}, not {INPUT_SHAPE}"
        )
    if served is not None and metadata.class_names != served.class_names:
        raise IncompatibleModel(
            f"version {version} has classes {metadata.class_names}, the served version {served.version} "
            f"has {served.class_names}; restart the service to change the class list"
        )
    directory = store.version_dir(version)
    engine = load_engine(directory, engine_kind)  # type: ignore[arg-type]
    return LoadedModel(version, metadata, engine, directory)


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.store = ModelStore(settings.model_store, settings.model_name)
        self.pinned = settings.model_version
        self.engine_kind = settings.engine
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self._failed: dict[int, str] = {}
        self._lock = asyncio.Lock()

    def target_version(self) -> int | None:
        return self.pinned if self.pinned is not None else self.store.current_version()

    async def refresh(self, *, force: bool = False) -> RefreshOutcome:
        """Serve the store's current (or pinned) version if it is not served yet and passes the checks."""
        async with self._lock:
            served = self.current.version if self.current else None
            try:
                target = self.target_version()
            except StoreError as exc:
                return self._failure(None, str(exc))
            if target is None:
                return RefreshOutcome(served, False, f"model {self.store.name!r} has no current version")
            if target == served:
                return RefreshOutcome(served, False)
            if target in self._failed and not force:
                return RefreshOutcome(served, False, self._failed[target])
            started = time.perf_counter()
            try:
                loaded = await asyncio.to_thread(
                    load_version, self.store, target, self.engine_kind, self.current
                )
            except (StoreError, EngineError, IncompatibleModel) as exc:
                return self._failure(target, str(exc))
            self.metrics.load_duration.observe(time.perf_counter() - started)
            self._swap(loaded)
            return RefreshOutcome(loaded.version, True)

    async def watch(self, interval_s: float) -> None:
        """Poll the store forever; each pass is cheap (one small file read) when nothing changed."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)

    def _swap(self, loaded: LoadedModel) -> None:
        previous = self.current
        self.current = loaded
        self._failed.pop(loaded.version, None)
        self.metrics.reloads.labels("success").inc()
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(self.store.name, str(loaded.version), loaded.engine.kind).set(1)
        self.metrics.last_swap.set(time.time())
        logger.info(
            "serving version",
            extra={
                "model": self.store.name,
                "version": loaded.version,
                "previous_version": previous.version if previous else None,
                "engine": loaded.engine.kind,
            },
        )

    def _failure(self, version: int | None, reason: str) -> RefreshOutcome:
        if version is not None:
            self._failed[version] = reason
        self.metrics.reloads.labels("failure").inc()
        served = self.current.version if self.current else None
        logger.error("version not served", extra={"version": version, "reason": reason, "serving": served})
        return RefreshOutcome(served, False, reason)
