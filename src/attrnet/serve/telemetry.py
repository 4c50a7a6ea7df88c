"""The server's Prometheus metrics (GET /metrics): requests by endpoint and status, latency, batch sizes.

Each application gets its own registry, so several apps in one process (tests) do not share counters. The
middleware is plain ASGI: it sees the status of every response, errors and streamed bodies included.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KNOWN_PATHS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict")


class ServerMetrics:
    """Counters and histograms of one application."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("attrnet_http_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("attrnet_http_request_duration_seconds", "Time from request to response, "
                                 "by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("attrnet_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("attrnet_batch_inference_seconds", "Time of one forward pass",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("attrnet_images_predicted", "Images predicted", registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def endpoint_label(path: str) -> str:
    """The path for known endpoints, "/static" for page files, "other" for anything else (bounded labels)."""
    if path in KNOWN_PATHS:
        return path
    return "/static" if path.startswith("/static/") else "other"


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP response by endpoint, method and status, and times it."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), {"code": 500}

        async def record_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            endpoint = endpoint_label(scope.get("path", ""))
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
