"""Prometheus metrics: one registry per app, named the Prometheus way, low-cardinality labels only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Inference requests, for summary(): POSTs, except to the routes that act on the server.
OPERATOR_ROUTES = ("/admin", "/v2/repository")


class BatchHistogram:
    """A labelled histogram observed a batch at a time with NumPy (one call per engine batch).

    prometheus_client's Histogram.observe takes one value per call, which costs more than the inference
    of a large batch. This counts a whole batch into the buckets with one bincount and adds each count
    to the Histogram's own bucket values, so the result is an ordinary Histogram, multiprocess mode
    included. Only the event loop observes.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.histogram = Histogram(name, documentation, [label], buckets=buckets, registry=registry)
        self.bounds = np.asarray(buckets, dtype=np.float64)

    def observe_many(self, label_value: str, values: np.ndarray) -> None:
        child = self.histogram.labels(label_value)
        # Bucket i counts values <= bounds[i] (not cumulated: prometheus_client sums them when collected);
        # the last one counts the rest (+Inf).
        counts = np.bincount(
            np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1
        )
        for index in np.flatnonzero(counts):
            child._buckets[index].inc(int(counts[index]))
        child._sum.inc(float(np.sum(values)))


class Metrics:
    def __init__(self, shared_folder: Path | None = None) -> None:
        """shared_folder: with WORKERS > 1, the folder of every worker's values (WorkerGroup.folder)."""
        self.shared_folder = shared_folder
        # Labelled children cached per label set: .labels() costs a lock and a lookup on every call.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Gauges say how the workers' values combine (WORKERS > 1): summed over the live ones, or the
        # largest; model_info keeps one series per worker (a pid label), so a rollout shows per worker.
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being handled.", registry=r, multiprocess_mode="livesum"
        )
        self.body_bytes = Gauge(
            "http_request_body_bytes_held",
            "Request body bytes held in memory (MAX_INFLIGHT_BODY_BYTES).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inference_latency = Histogram(
            "model_inference_duration_seconds",
            "Engine call latency per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "model_batch_size_images", "Images per engine call.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "model_queue_duration_seconds",
            "Time a request waits before its batch runs.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "model_queue_images",
            "Images waiting for the engine.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "model_queue_capacity_images",
            "Images the queues hold before they refuse (MAX_QUEUE_IMAGES per worker).",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "model_rejected_requests",
            "Requests refused by the inference path: queue full, timed out, evaluations busy.",
            ["reason"],
            registry=r,
        )
        self.http_rejected = Counter(
            "http_rejected_requests",
            "Requests refused for how they arrived: body budget or pace, head size or time, connections.",
            ["reason"],
            registry=r,
        )
        self.predictions = Counter(
            "model_predictions", "Predicted images by class.", ["model", "class_name"], registry=r
        )
        self.confidence = BatchHistogram(
            "model_prediction_confidence",
            "Probability of the predicted class, per prediction.",
            "model",
            CONFIDENCE_BUCKETS,
            r,
        )
        self.ood = Counter(
            "model_ood_predictions",
            "Predictions flagged out-of-distribution (unlike the training data).",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "The served model version (value 1).",
            ["name", "version", "engine"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.load_duration = Histogram(
            "model_load_duration_seconds",
            "Time to load and verify a version.",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reloads = Counter("model_reloads", "Version loads by outcome.", ["model", "outcome"], registry=r)
        self.retries = Counter(
            "model_reload_retries",
            "Loads of a version that had failed before (changed or backed off).",
            ["model"],
            registry=r,
        )
        self.watcher_restarts = Counter(
            "model_watcher_restarts",
            "Store watchers that ended unexpectedly and were started again.",
            ["model"],
            registry=r,
        )
        self.last_swap = Gauge(
            "model_last_swap_timestamp_seconds",
            "Unix time the served version last changed.",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )

    def observe_predictions(
        self, model: str, class_names: list[str], probabilities: np.ndarray, ood_flags: np.ndarray | None
    ) -> None:
        """One engine batch: predicted classes, confidences and OOD flags."""
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(class_names))
        for class_id in np.flatnonzero(counts):
            self.predictions.labels(model, class_names[class_id]).inc(int(counts[class_id]))
        self.confidence.observe_many(model, probabilities.max(axis=1))
        if ood_flags is not None:
            self.ood.labels(model).inc(int(np.count_nonzero(ood_flags)))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.request_latency.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> CollectorRegistry:
        """What /metrics shows: this registry, or with WORKERS > 1 every worker's values combined."""
        if self.shared_folder is None:
            return self.registry
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=str(self.shared_folder))
        return combined

    def summary(self) -> dict[str, Any]:
        """Cumulative totals of inference requests (count, 5xx, latency histogram) and of predictions per
        model and class: what a page needs to draw rates over time from two readings."""
        samples = [sample for family in self.exposition().collect() for sample in family.samples]
        inference_routes = {
            s.labels["route"]
            for s in samples
            if s.name == "http_requests_total"
            and s.labels["method"] == "POST"
            and not s.labels["route"].startswith(OPERATOR_ROUTES)
        }
        requests = errors = 0
        buckets: dict[str, float] = {}
        latency_sum = 0.0
        predictions: dict[str, dict[str, int]] = {}
        ood: dict[str, int] = {}
        for sample in samples:
            labels = sample.labels
            inference = labels.get("route") in inference_routes
            if inference and sample.name == "http_requests_total":
                requests += int(sample.value)
                errors += int(sample.value) if labels["status"].startswith("5") else 0
            elif inference and sample.name == "http_request_duration_seconds_bucket":
                buckets[labels["le"]] = buckets.get(labels["le"], 0) + sample.value
            elif inference and sample.name == "http_request_duration_seconds_sum":
                latency_sum += sample.value
            elif sample.name == "model_predictions_total":
                predictions.setdefault(labels["model"], {})[labels["class_name"]] = int(sample.value)
            elif sample.name == "model_ood_predictions_total":
                ood[labels["model"]] = int(sample.value)
        return {
            "requests": requests,
            "errors": errors,
            "latency": {
                "count": int(buckets.pop("+Inf", 0)),
                "sum": latency_sum,
                "buckets": [[float(le), int(count)] for le, count in buckets.items()],  # cumulative
            },
            "predictions": predictions,
            "ood": ood,
        }
