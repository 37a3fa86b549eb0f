"""Adaptive micro-batching with backpressure between request handlers and the engine.

A request never waits for company: when the engine is idle its images run at once. Requests that
arrive while a call is running queue up and go together in the next call (up to max_batch_images,
one model version per call). The queue is bounded in images: a request that would overflow it gets
503 at once, and one that waits longer than the timeout gets 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import NotReady, Overloaded, Timeout
from service.inference.model import Inference, LoadedModel
from service.metrics import Metrics


@dataclass
class _Job:
    model: LoadedModel
    images: np.ndarray
    future: asyncio.Future[Inference]
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        metrics: Metrics,
        *,
        model: str,
        max_batch_images: int,
        max_queue_images: int,
        timeout_s: float,
        inline_max_images: int,
    ) -> None:
        self.metrics = metrics
        # This batcher's series of the per-model metrics (one batcher per served model).
        self._queue_depth = metrics.queue_depth.labels(model)
        metrics.queue_capacity.labels(model).set(max_queue_images)
        self._queue_time = metrics.queue_time.labels(model)
        self._inference_latency = metrics.inference_latency.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self.max_batch_images = max_batch_images
        self.max_queue_images = max_queue_images
        self.timeout_s = timeout_s
        # Below this many images an engine call is cheaper than the hop to a thread and back.
        self.inline_max_images = inline_max_images
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(NotReady("the service is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    def check_capacity(self) -> None:
        """Refuse at once, before a body is read, when the queue is already full."""
        if self._queued_images >= self.max_queue_images:
            self._refuse()

    def _refuse(self) -> None:
        self.metrics.rejected.labels("queue_full").inc()
        raise Overloaded(
            f"the inference queue is full ({self._queued_images} images waiting); retry shortly",
            headers={"Retry-After": "1"},
        )

    async def predict(
        self, model: LoadedModel, images: np.ndarray, deadline: float | None = None
    ) -> Inference:
        """Probabilities and OOD scores for `images` from `model`, in order; may share an engine call.

        deadline: event-loop time by which the result is due (504 after it); default timeout_s from now.
        """
        count = len(images)
        if self._queued_images + count > self.max_queue_images:
            self._refuse()
        loop = asyncio.get_running_loop()
        job = _Job(model, images, loop.create_future())
        self._queue.append(job)
        self._queued_images += count
        self._queue_depth.set(self._queued_images)
        self._wakeup.set()
        expiry = loop.call_at(
            deadline if deadline is not None else loop.time() + self.timeout_s, self._expire, job
        )
        try:
            return await job.future
        finally:
            expiry.cancel()

    def _expire(self, job: _Job) -> None:
        if not job.future.done():
            self.metrics.rejected.labels("timeout").inc()
            job.future.set_exception(
                Timeout(
                    f"no result within the request timeout ({self.timeout_s:g} s); the service is overloaded"
                )
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = self._take_batch()
            if jobs:
                await self._execute(jobs)
            # Let handlers parse and enqueue the requests that arrived meanwhile, so they batch.
            await asyncio.sleep(0)

    def _take_batch(self) -> list[_Job]:
        jobs: list[_Job] = []
        images = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # timed out while queued: never run it
                self._queue.popleft()
                self._queued_images -= len(job.images)
                continue
            if jobs and (job.model is not jobs[0].model or images + len(job.images) > self.max_batch_images):
                break
            self._queue.popleft()
            self._queued_images -= len(job.images)
            jobs.append(job)
            images += len(job.images)
        self._queue_depth.set(self._queued_images)
        return jobs

    async def _execute(self, jobs: list[_Job]) -> None:
        model = jobs[0].model
        images = jobs[0].images if len(jobs) == 1 else np.concatenate([job.images for job in jobs])
        batch = images.astype(np.float32, copy=False)
        started = time.perf_counter()
        for job in jobs:
            self._queue_time.observe(started - job.enqueued_at)
        try:
            if len(batch) <= self.inline_max_images:
                result = model.infer(batch)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._executor, model.infer, batch)
        except Exception as exc:  # an engine failure fails this batch's requests, not the worker
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._inference_latency.observe(time.perf_counter() - started)
        self._batch_size.observe(len(batch))
        self.metrics.observe_predictions(
            model.name, model.class_names, result.probabilities, result.ood_flags
        )
        offset = 0
        for job in jobs:
            count = len(job.images)
            if not job.future.done():
                job.future.set_result(result[offset : offset + count])
            offset += count
