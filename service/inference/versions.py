"""Which version is served: load, verify and swap versions of the store without dropping requests.

A candidate version is loaded off the event loop, checked (metadata, input shape, classes, engine
parity on the probe batch, which is also the warm-up, and the OOD detector's scores on that batch),
then swapped in with one reference assignment. Requests that started on the old version finish on
it. A version that fails is never served, whatever its load raised (a store written by a broken
training job can hold anything): the failure is logged and counted, and the version is tried again
when any of its files changes, when a reload is forced, or after a backoff (RETRY_POLLS poll
intervals, doubling up to RETRY_MAX_S) in case the failure was transient. A pass of the watch loop
that fails is logged and the loop goes on. The store is never modified here.

One memory of failed versions serves both the watcher and the versions asked for by number: a
version that failed either way is refused, without another load, until its backoff is over (the
watcher also retries it as soon as its files change). A client asking again and again for a broken
version therefore costs nothing, and a missing version folder (cheap to find missing) is not kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from core.engines import EngineKind
from core.store import ModelStore, StoreError, VersionNotFound
from service.inference.model import (
    LOAD_ERRORS,
    LoadedModel,
    load_version,
    refusal_reason,
)
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)
RETRY_POLLS = 10
RETRY_MAX_S = 600.0
MAX_FAILED = 100  # failed versions remembered per model (the oldest forgotten first)
T = TypeVar("T")
Fingerprint = tuple[tuple[str, int, int], ...]


class VersionRefused(Exception):
    """A version that failed to load, refused until its backoff is over; the message is the reason."""


@dataclass(frozen=True)
class ReloadOutcome:
    served_version: int | None
    changed: bool
    error: str | None = None


@dataclass(frozen=True)
class _Failure:
    reason: str
    fingerprint: Fingerprint  # the version folder's files when it failed
    attempts: int
    retry_at: float  # time.monotonic() after which it is tried again even if unchanged


def version_fingerprint(store: ModelStore, version: int) -> Fingerprint:
    """Names, sizes and modification times of a version's files: changes when any file is replaced."""
    try:
        entries = [(entry.name, entry.stat()) for entry in os.scandir(store.version_dir(version))]
    except (OSError, StoreError):
        return ()
    return tuple(sorted((name, info.st_size, info.st_mtime_ns) for name, info in entries))


class ModelManager:
    """Follows the store: loads, verifies and swaps versions. All store I/O runs in one thread of
    its own with a timeout, so a hung file system can neither block the event loop nor pile up threads."""

    def __init__(self, settings: Settings, metrics: Metrics, name: str | None = None) -> None:
        name = name or settings.model_name
        self.store = ModelStore(settings.model_store, name)
        self.name = name
        # MODEL_VERSION pins the default model only.
        self.pinned = settings.model_version if name == settings.model_name else None
        self.engine_kind: EngineKind = settings.engine
        self.metrics = metrics
        self.served: LoadedModel | None = None
        self.timeout_s = settings.store_timeout_s
        self.retry_base_s = RETRY_POLLS * settings.poll_interval_s
        self._failed: dict[int, _Failure] = {}
        self._lock = asyncio.Lock()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-io")

    async def run_io(self, function: Callable[..., T], *args: Any) -> T:
        """Run a store call in the store thread; StoreError when it takes longer than STORE_TIMEOUT_S."""
        future = asyncio.get_running_loop().run_in_executor(self._io, function, *args)
        try:
            # Not asyncio.wait_for: in Python 3.11 it returns the result when a cancellation meets a call
            # that has just finished, and the cancelled watcher then polled on while shutdown waited.
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise StoreError(f"the model store did not answer within {self.timeout_s:g} s") from None

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)

    def version_table(self) -> dict[str, Any]:
        """The store's versions with their metrics, and which is promoted, pinned and served (for
        /admin/versions and /models/{name}/versions). Reads the store: call it through run_io."""
        served = self.served.version if self.served else None
        rows = [
            {**summary.model_dump(mode="json", exclude_none=True), "served": summary.version == served}
            for summary in self.store.version_summaries()
        ]
        return {
            "name": self.store.name,
            "current": self.store.current_version(),
            "pinned": self.pinned,
            "served": served,
            "versions": rows,
        }

    def target_version(self) -> int | None:
        return self.pinned if self.pinned is not None else self.store.current_version()

    async def reload(self, *, force: bool = False) -> ReloadOutcome:
        """Serve the promoted (or the pinned) version if it is not served yet and passes the checks."""
        async with self._lock:
            served = self.served.version if self.served else None
            try:
                target = await self.run_io(self.target_version)
            except StoreError as exc:
                return self._failure(None, str(exc))
            if target is None:
                return ReloadOutcome(served, False, f"model {self.store.name!r} has no promoted version")
            if target == served:
                return ReloadOutcome(served, False)
            fingerprint: Fingerprint = ()
            try:
                fingerprint = await self.run_io(version_fingerprint, self.store, target)
                if not force and not self._due(target, fingerprint):
                    return ReloadOutcome(served, False, self._failed[target].reason)
                started = time.perf_counter()
                loaded = await self.run_io(load_version, self.store, target, self.engine_kind, self.served)
            except Exception as exc:  # whatever a broken version raises, it is a refusal
                return self._failure(target, refusal_reason(exc), fingerprint)
            self.metrics.load_duration.labels(self.name).observe(time.perf_counter() - started)
            self._swap(loaded)
            return ReloadOutcome(loaded.version, True)

    async def load(self, version: int) -> LoadedModel:
        """Load and verify a version asked for by number, without serving it as the promoted one.
        Raises VersionNotFound, or VersionRefused whatever else went wrong, and while a failure of
        that version (by number or by the watcher) is within its backoff. (Not a reload:
        model_reloads_total counts the versions swapped in, and their failures.)"""
        failure = self._failed.get(version)
        if failure is not None and time.monotonic() < failure.retry_at:
            raise VersionRefused(failure.reason)
        try:
            loaded = await self.run_io(load_version, self.store, version, self.engine_kind, self.served)
        except VersionNotFound:
            raise
        except Exception as exc:
            if not isinstance(exc, LOAD_ERRORS):
                logger.exception("unexpected error loading a version", extra={"version": version})
            reason = refusal_reason(exc)
            self._remember_failure(version, reason)
            raise VersionRefused(reason) from exc
        self._failed.pop(version, None)
        return loaded

    def _due(self, version: int, fingerprint: Fingerprint) -> bool:
        """Whether to try a version: never failed, its files changed since, or its backoff is over."""
        failure = self._failed.get(version)
        if failure is None:
            return True
        if fingerprint == failure.fingerprint and time.monotonic() < failure.retry_at:
            return False
        self.metrics.retries.labels(self.name).inc()
        return True

    async def watch(self, interval_s: float) -> None:
        """Poll the store forever; each pass is cheap (one small file read) when nothing changed."""
        while True:
            try:
                await self.reload()
            except Exception:  # a defect, not a bad version (reload refuses those): log it, go on
                self.metrics.reloads.labels(self.name, "failure").inc()
                logger.exception("store watch pass failed", extra={"model": self.name})
            await asyncio.sleep(interval_s)

    def _swap(self, loaded: LoadedModel) -> None:
        previous = self.served
        self.served = loaded
        self._failed.pop(loaded.version, None)
        self.metrics.reloads.labels(self.name, "success").inc()
        if previous is not None:
            # Zero first: with WORKERS > 1 the value lives on in the shared folder after remove().
            self.metrics.model_info.labels(self.name, str(previous.version), previous.engine.kind).set(0)
            self.metrics.model_info.remove(self.name, str(previous.version), previous.engine.kind)
        self.metrics.model_info.labels(self.name, str(loaded.version), loaded.engine.kind).set(1)
        self.metrics.last_swap.labels(self.name).set(time.time())
        logger.info(
            "serving version",
            extra={
                "model": self.store.name,
                "version": loaded.version,
                "previous_version": previous.version if previous else None,
                "engine": loaded.engine.kind,
            },
        )

    def _remember_failure(self, version: int, reason: str, fingerprint: Fingerprint = ()) -> None:
        """The one memory of failed versions: the reason, the files then, and the next try's time."""
        previous = self._failed.pop(version, None)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(RETRY_MAX_S, self.retry_base_s * 2 ** (attempts - 1))
        fingerprint = fingerprint or (previous.fingerprint if previous else ())
        self._failed[version] = _Failure(reason, fingerprint, attempts, time.monotonic() + delay)
        while len(self._failed) > MAX_FAILED:  # the oldest first: dicts keep insertion order
            del self._failed[next(iter(self._failed))]

    def _failure(self, version: int | None, reason: str, fingerprint: Fingerprint = ()) -> ReloadOutcome:
        if version is not None:
            self._remember_failure(version, reason, fingerprint)
        self.metrics.reloads.labels(self.name, "failure").inc()
        served = self.served.version if self.served else None
        logger.error("version not served", extra={"version": version, "reason": reason, "serving": served})
        return ReloadOutcome(served, False, reason)
