"""Serving two versions during a rollout: the champion answers, the challenger meets real traffic.

The registry holds the state (components/delivery/rollout.py writes it): the `challenger` alias and
its version's tags `rollout.stage` (shadow | canary), `rollout.percent`, `rollout.shadow_sample`.
Each worker polls it and keeps the challenger loaded (with its own preprocessing spec) while a stage
runs; `STATE` is that worker's view, read by the request path without a lock (one reference swap).

- shadow: after the champion has answered, a sampled share of its requests is queued for the
  challenger on a background thread, off the response path; its predictions go to the inference
  log's `rollout_log` under the same request ids and are never returned. The thread works only when
  no classification is in flight (idle capacity: on 2 cores a second model computing beside the
  champion costs its answers), and drops work that waited too long or found the queue full
  (counted), so a slow challenger or a saturated server never slows the champion.
- canary: `CanaryRouter` (ASGI) sends a stable share of clients to the challenger's routes: a hash
  of the `X-Client-Id` header (else `X-Request-Id`, else a fresh id) below `percent`. The answer names
  the version that answered; a challenger error falls back to the champion's answer.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("visionflow.serving")
LIVE_STAGES = ("shadow", "canary")
CANARY_SUFFIX = "_canary"  # /classify → /classify_canary: the challenger's own batch queue


@dataclass(frozen=True)
class Stage:
    mode: str  # shadow | canary
    name: str
    version: str
    percent: float = 0.0  # canary: share of clients routed to the challenger, 0..100
    shadow_sample: float = 1.0  # shadow: share of requests also answered by the challenger
    started: float = 0.0  # unix time the stage began (the rollout window's start)
    champion: str = ""  # the champion version when it began


class RolloutState:
    """This worker's view of the rollout: the stage and the loaded challenger, swapped together."""

    def __init__(self) -> None:
        self.current: tuple[Stage, Any] | None = None  # (stage, loaded challenger model)
        self.error: str | None = None
        self.dropped = 0  # shadow images dropped: queue full or no idle moment in time
        self.in_flight = 0  # classification requests being answered (CanaryRouter counts them)

    @property
    def stage(self) -> Stage | None:
        cur = self.current
        return cur[0] if cur else None


STATE = RolloutState()


def rollout_row(request_id: str, mode: str, name: str, version: str, answer: dict | None, latency_ms: float, exc: Exception | None = None) -> dict:
    """One row of the inference log's rollout_log: an attempt's answer, or its error."""
    return {"request_id": request_id, "ts": time.time(), "mode": mode, "model_name": name, "model_version": version,
            "predicted": answer["class_name"] if answer else None, "confidence": answer["confidence"] if answer else None,
            "latency_ms": latency_ms, "error": None if exc is None else f"{type(exc).__name__}: {str(exc)[:200]}"}  # fmt: skip


def challenger_uri(model_uri: str) -> str | None:
    """models:/NAME@champion → NAME's challenger; a pinned version or a Bento's model has no rollout."""
    if model_uri.startswith("models:/") and model_uri.endswith("@champion"):
        return model_uri.removesuffix("@champion") + "@challenger"
    return None


def read_stage(uri: str) -> Stage | None:
    """The live stage the registry records for `uri`'s challenger, or None (no alias, or a stage that is over)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, _, alias = uri.removeprefix("models:/").partition("@")
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            return None
        raise
    tags = mv.tags or {}
    mode = tags.get("rollout.stage")
    if mode not in LIVE_STAGES:
        return None
    return Stage(mode, name, str(mv.version), float(tags.get("rollout.percent") or 0), float(tags.get("rollout.shadow_sample") or 1.0),
                 float(tags.get("rollout.started") or 0), tags.get("rollout.champion", ""))  # fmt: skip


def refresh(uri: str, loader, on_change=None) -> None:
    """Bring STATE in line with the registry: load a new challenger (warm) before it takes traffic,
    drop it when the stage ends. Errors keep the previous state (reported on /metadata).
    `on_change(old stage, new stage)` runs after every poll (metrics)."""
    before = STATE.stage
    try:
        stage = read_stage(uri)
        cur = STATE.current
        if stage is None:
            if cur is not None:
                log.info("rollout of %s v%s over: serving the champion only", cur[0].name, cur[0].version)
            STATE.current, STATE.error = None, None
            return
        model = cur[1] if cur is not None and cur[0].version == stage.version else loader(f"models:/{stage.name}/{stage.version}")
        if cur is None or cur[0] != stage:
            log.info("rollout: %s v%s in %s (%s)", stage.name, stage.version, stage.mode, f"{stage.percent:g} %" if stage.mode == "canary" else "shadow")
        STATE.current, STATE.error = (stage, model), None
    except Exception as exc:  # the champion keeps serving; the poller tries again
        STATE.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
        log.warning("rollout state unavailable: %s", STATE.error)
    if on_change is not None:
        try:
            on_change(before, STATE.stage)
        except Exception as exc:  # metrics are never worth a failed poll
            log.warning("rollout metrics not updated: %s", exc)


def start_rollout_poller(uri: str, loader, seconds: float, stop: threading.Event, on_change=None) -> None:
    refresh(uri, loader, on_change)

    def loop() -> None:
        while not stop.wait(seconds):
            refresh(uri, loader, on_change)

    threading.Thread(target=loop, daemon=True, name="rollout-poll").start()


def routes_to_challenger(key: str, percent: float) -> bool:
    """Stable: the same key always lands on the same side for a given percentage."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10_000
    return bucket < round(percent * 100)


class CanaryRouter:
    """ASGI middleware (innermost): during a canary, rewrite the path of a routed classification to
    the challenger's route. Headers are read here because a batched API sees no request headers."""

    def __init__(self, app, paths: frozenset[str] = frozenset({"/classify", "/classify_batch"})):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            STATE.in_flight += 1  # one event loop per worker: no lock needed
            try:
                return await self._route(scope, receive, send)
            finally:
                STATE.in_flight -= 1
        return await self._route(scope, receive, send)

    async def _route(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith(CANARY_SUFFIX):  # internal routes: reached only through the router
            body = b'{"error": "not found"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"] in self.paths:
            cur = STATE.current
            if cur is not None and cur[0].mode == "canary":
                headers = dict(scope.get("headers", []))
                key = (headers.get(b"x-client-id") or headers.get(b"x-request-id") or uuid.uuid4().hex.encode()).decode("latin-1")
                if routes_to_challenger(key, cur[0].percent):
                    scope = {**scope, "path": scope["path"] + CANARY_SUFFIX, "raw_path": (scope["path"] + CANARY_SUFFIX).encode()}
        return await self.app(scope, receive, send)


class ShadowWorker:
    """One background thread answering queued champion batches with the challenger, off the
    response path; a full queue drops work instead of waiting."""

    def __init__(self, record, max_queued: int = 16, max_wait_s: float = 2.0):
        self.record = record  # rows → the inference log (InferenceLog.record_rollout)
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queued)
        self.max_wait_s = max_wait_s
        threading.Thread(target=self._run, daemon=True, name="shadow").start()

    def _wait_for_idle(self, queued_at: float) -> bool:
        """Until no classification is in flight; False when the work has waited `max_wait_s`."""
        while STATE.in_flight > 0:
            if time.monotonic() - queued_at > self.max_wait_s:
                return False
            time.sleep(0.002)
        return True

    def submit(self, stage: Stage, model, images: list, request_ids: list[str]) -> bool:
        try:
            self.jobs.put_nowait((stage, model, images, request_ids, time.monotonic()))
            return True
        except queue.Full:
            STATE.dropped += len(images)
            return False

    def _run(self) -> None:
        while True:
            stage, model, images, request_ids, queued_at = self.jobs.get()
            for k in range(len(images)):  # one image at a time: each waits for an idle moment, so the champion waits at most one image
                if not self._wait_for_idle(queued_at):
                    STATE.dropped += len(images) - k
                    break
                self._answer(stage, model, images[k : k + 1], request_ids[k : k + 1])

    def _answer(self, stage: Stage, model, images: list, request_ids: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            answers, _ = model.predict(images)
            ms = (time.perf_counter() - t0) * 1000
            rows = [rollout_row(rid, "shadow", stage.name, stage.version, a, ms) for rid, a in zip(request_ids, answers)]
        except Exception as exc:  # a failing challenger is evidence, not an outage
            ms = (time.perf_counter() - t0) * 1000
            rows = [rollout_row(rid, "shadow", stage.name, stage.version, None, ms, exc) for rid in request_ids]
        try:
            self.record(rows)
        except Exception as exc:  # a full disk must not stop the thread
            log.warning("shadow rows not logged: %s", exc)
