"""What an operator sees of the service (no torch; BentoML's supervisor imports this): Prometheus
series named `visionflow_*` next to BentoML's own on GET /metrics, the API key in front of every
endpoint, a request id on every answer, and one JSON log line per request when access logging is on.

prometheus_client is imported only inside the worker processes, at first use: BentoML sets
PROMETHEUS_MULTIPROC_DIR after it imports the service module, and a client imported earlier would
count in memory where /metrics (which merges every worker's files) never sees it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import time
import uuid
from functools import cache

ENDPOINTS = frozenset({"/", "/classify", "/classify_batch", "/explain", "/feedback", "/generate", "/metadata", "/healthz", "/livez", "/readyz", "/metrics"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("visionflow_requests_total", "HTTP requests by endpoint, status and model version", ["endpoint", "status", "model_version"])
        self.errors = Counter("visionflow_request_errors_total", "HTTP answers >= 400 by endpoint and status", ["endpoint", "status"])
        self.latency = Histogram("visionflow_request_duration_seconds", "Time to answer, by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS)
        self.shed = Counter("visionflow_shed_total", "Requests shed with 503 (overload), by endpoint", ["endpoint"])
        self.batch_size = Histogram("visionflow_batch_size", "Images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.predictions = Counter("visionflow_predictions_total", "Predictions by model version and class", ["model_version", "class_name"])
        self.confidence = Histogram("visionflow_confidence", "Probability of the predicted class", ["model_version"], buckets=CONFIDENCE_BUCKETS)
        self.feedback = Counter("visionflow_feedback_total", "Feedback received, by model version and whether the prediction was right",
                                ["model_version", "correct"])  # fmt: skip
        # the log holds every worker's feedback: each update writes the whole version's accuracy
        self.live_accuracy = Gauge("visionflow_live_accuracy", "Accuracy over all feedback so far", ["model_version"], multiprocess_mode="mostrecent")
        self.feedback_count = Gauge("visionflow_live_accuracy_feedback", "Feedback behind visionflow_live_accuracy", ["model_version"],
                                    multiprocess_mode="mostrecent")  # fmt: skip
        # a rollout (serving/rollout.py), from the inference log's window since the stage started, refreshed by each poll
        roll = {"multiprocess_mode": "mostrecent"}
        self.rollout_stage = Gauge(
            "visionflow_rollout_stage", "1 while the version is in this rollout stage (canary: also _percent)", ["model_version", "stage"], **roll
        )
        self.rollout_percent = Gauge("visionflow_rollout_percent", "Share of clients routed to the canary", ["model_version"], **roll)
        self.rollout_requests = Gauge("visionflow_rollout_requests", "Requests each side answered in the rollout window", ["model_version", "role"], **roll)
        self.rollout_errors = Gauge("visionflow_rollout_errors", "Failed answers of each side in the rollout window", ["model_version", "role"], **roll)
        self.rollout_agreement = Gauge("visionflow_rollout_agreement", "Share of shadowed requests where the challenger agreed with the champion",
                                       ["model_version"], **roll)  # fmt: skip
        self.rollout_live_accuracy = Gauge("visionflow_rollout_live_accuracy", "Accuracy on feedback in the rollout window", ["model_version", "role"], **roll)


@cache
def metrics() -> Metrics:
    return Metrics()


def endpoint_label(path: str) -> str:
    return path if path in ENDPOINTS else "other"  # bounded label values, whatever clients request


def access_logger() -> logging.Logger:
    log = logging.getLogger("visionflow.access")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))  # the message is the JSON object
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


class RequestContext:
    """Outermost ASGI middleware. With an API key: every path but `open_paths` answers 401 without
    `Authorization: Bearer <key>` (constant-time compare). Every answer gets an X-Request-Id: the
    one the handler set (a classification's id, also in its JSON), else the client's if well formed,
    else a new one. Counts, times and (with `access_log`) logs each request as one JSON line."""

    def __init__(self, app, api_key: str | None, open_paths: frozenset[str], access_log: bool):
        self.app, self.open_paths = app, open_paths
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.log = access_logger() if access_log else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        headers = dict(scope.get("headers", []))
        client_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = client_id if REQUEST_ID.match(client_id) else uuid.uuid4().hex
        seen: dict = {}

        async def observe(message):
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers", []))
                got = {k.lower(): v for k, v in hdrs}
                if b"x-request-id" not in got:
                    hdrs.append((b"x-request-id", request_id.encode()))
                seen.update(status=message["status"], request_id=got.get(b"x-request-id", request_id.encode()).decode("latin-1"),
                            model=got.get(b"x-model-version", b"").decode("latin-1"))  # fmt: skip
                message = {**message, "headers": hdrs}
            await send(message)

        try:
            if self.key is not None and path not in self.open_paths and not hmac.compare_digest(headers.get(b"authorization", b""), self.key):
                body = json.dumps({"error": "missing or wrong API key: send 'Authorization: Bearer <VISIONFLOW_API_KEY>'"}).encode()
                await observe({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="visionflow"'), (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
            else:
                await self.app(scope, receive, observe)
        except Exception:
            seen.setdefault("status", 500)
            raise
        finally:
            self._account(scope, path, seen, time.perf_counter() - start)

    def _account(self, scope, path: str, seen: dict, seconds: float) -> None:
        status = int(seen.get("status", 499))  # 499: the client went away before an answer
        endpoint = endpoint_label(path)
        m = metrics()
        version = seen.get("model", "").rpartition("/")[2]
        m.requests.labels(endpoint, str(status), version).inc()
        m.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            m.errors.labels(endpoint, str(status)).inc()
        if status == 503:
            m.shed.labels(endpoint).inc()
        if self.log is not None:
            self.log.info(json.dumps({
                "ts": round(time.time(), 3), "request_id": seen.get("request_id"), "method": scope.get("method"), "path": path,
                "status": status, "latency_ms": round(seconds * 1000, 2), "model_version": seen.get("model") or None,
                "client": (scope.get("client") or [None])[0],
            }))  # fmt: skip
