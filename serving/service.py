"""The visionflow HTTP service (BentoML 1.4 service class): the MLflow champion, served.

    bentoml serve serving.service:Visionflow --host 127.0.0.1 --port 3000   (or `visionflow serve`)

- POST /classify        multipart field `image` (PNG/JPEG/BMP, any size, gray or RGB)
- POST /classify_batch  multipart fields `images` (one or more files) → one answer per image
- POST /generate        JSON {"class_name" or "label", "n"} → PNG grid from the `generator` alias
- POST /explain         multipart field `image` → the answer plus a Grad-CAM (or saliency) overlay (PNG, base64)
- POST /feedback        JSON {"request_id", "label"}: the true class of a served prediction
- GET  /healthz         200 only when the model is loaded and warmed up
- GET  /metadata        the model, its metrics and full lineage
- GET  /metrics         Prometheus: BentoML's series and visionflow_* (serving/observability.py)
- GET  /                a page to classify an image by hand
The model version is in every answer and in the `X-Model-Version` header; every prediction has a
`request_id` (also the `X-Request-Id` header of /classify) under which it is in the inference log
(components/monitoring/inference_log.py). When the alias moves, a poller loads and warms the new
version, then swaps it in: no restart, no failed request. With VISIONFLOW_API_KEY set, every path
but the probes, /metrics and the page needs `Authorization: Bearer <key>`.
Settings come from the environment (serving/settings.py: VISIONFLOW_MODEL_URI, VISIONFLOW_BATCHING, ...).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
import os
import random
import time
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from components.tracking.mlflow_store import default_uri
from components.workspace import Workspace

_ws = Workspace.at(os.environ.get("VISIONFLOW_ROOT", "."))
_ws.activate()  # tool state in the workspace, telemetry off
os.environ.setdefault("MLFLOW_TRACKING_URI", default_uri(_ws))  # the workspace's registry unless told otherwise

# torch and the models load in the worker processes only (serving.runtime, imported in __init__):
# BentoML's supervisor imports this module for its config, and torch would cost it ~0.5 GB
from serving import rollout  # noqa: E402
from serving.observability import RequestContext, metrics  # noqa: E402
from serving.settings import BatchAnswers, InputError, LoadShedder, MultipartGuard, NotServedHere, Settings, cap_batch_wait, decode_image  # noqa: E402

log = logging.getLogger("visionflow.serving")

SETTINGS = Settings.from_env()  # the process shape (workers, batching) is fixed when the service is defined
HAS_TORCH = importlib.util.find_spec("torch") is not None  # the slim image serves an ONNX export without torch
FULL_IMAGE_HINT = "this server runs the ONNX export without torch (the slim image); serve the full image for it: visionflow package --image --flavour full"
if SETTINGS.batching:
    cap_batch_wait(SETTINGS.batch_wait_ms)
probes = FastAPI(title="visionflow probes")


def _http_error(exc: InputError) -> bentoml.exceptions.BentoMLException:
    return bentoml.exceptions.BentoMLException(str(exc), error_code=HTTPStatus(exc.status))


def _read(path: Path, settings: Settings) -> Image.Image:
    size = path.stat().st_size
    if size > settings.max_bytes:
        raise InputError(f"image is {size:,} bytes, over the {settings.max_bytes:,}-byte cap", 413)
    return decode_image(path.read_bytes(), settings.max_pixels, settings.max_bytes)


def _log_path(settings: Settings) -> Path | None:
    if (settings.inference_log or "").lower() == "off":
        return None
    return _ws.inference_log  # VISIONFLOW_INFERENCE_LOG or the workspace's, as `visionflow monitor` reads it


def inference_log_state(path: Path | None) -> dict[str, Any]:
    """Where predictions and feedback are kept, and whether they outlive this container. In an image,
    VISIONFLOW_LOG_VOLUME names the folder a volume must be mounted on; without one the log would be
    lost with the container, which the service says at start and on /metadata, never silently."""
    if path is None:
        return {"path": None, "persistent": False, "why": "the inference log is off (VISIONFLOW_INFERENCE_LOG=off)"}
    volume = os.environ.get("VISIONFLOW_LOG_VOLUME")
    if volume and not os.path.ismount(volume):
        return {"path": str(path), "persistent": False, "why": f"no volume is mounted at {volume}: the log is lost with the container; mount one there"}
    return {"path": str(path), "persistent": True, "why": f"on the volume at {volume}" if volume else "on the host's filesystem"}


def _json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@bentoml.asgi_app(probes, path="/")
@bentoml.service(name="visionflow", workers=SETTINGS.workers, traffic={"timeout": 30}, logging={"access": {"enabled": False}})  # RequestContext logs
class Visionflow:
    def __init__(self) -> None:
        from serving.runtime import ModelSlot, start_poller

        if HAS_TORCH and SETTINGS.torch_threads > 0:  # small models: fewer intra-op threads leave cores to HTTP handling
            import torch

            torch.set_num_threads(SETTINGS.torch_threads)
        self.settings = SETTINGS
        self.classifier = ModelSlot(self.settings.model_uri)
        self.generator = ModelSlot(self.settings.generator_uri) if self.settings.generator_uri else None
        for slot in filter(None, (self.classifier, self.generator)):
            slot.refresh()  # load + warm before the first request
        from components.monitoring.inference_log import InferenceLog

        path = _log_path(self.settings)
        self.inference_log = None if path is None else InferenceLog(path, sample=self.settings.log_sample, keep_images=self.settings.keep_images,
                                                                   keep_images_mb=self.settings.keep_images_mb, max_rows=self.settings.log_max_rows)  # fmt: skip
        self._log_failed = False
        self.log_state = inference_log_state(path)
        if path is not None and not self.log_state["persistent"]:
            log.warning(json.dumps({"event": "inference_log_not_persistent", "path": str(path), "why": self.log_state["why"]}))
        self._stop = start_poller([s for s in (self.classifier, self.generator) if s], self.settings.poll_seconds)
        # a rollout (serving/rollout.py): the challenger alias's live stage, polled like the champion
        self.shadow = None
        self._rollout_metrics_at = 0.0
        self.challenger_uri = rollout.challenger_uri(self.settings.model_uri) if self.settings.rollout else None
        if self.challenger_uri:
            from serving.runtime import load_registered

            if self.inference_log is not None:
                self.shadow = rollout.ShadowWorker(self.inference_log.record_rollout)
            rollout.start_rollout_poller(self.challenger_uri, load_registered, self.settings.poll_seconds, self._stop, self._rollout_metrics)
        import gc

        gc.collect()
        gc.freeze()  # the ~1M long-lived objects of torch/mlflow/the model leave the GC's scans: no long pauses

    def _rollout_metrics(self, before, stage) -> None:
        """visionflow_rollout_* from the inference log's window since the stage began (each poll)."""
        m = metrics()
        if before is not None and (stage is None or (before.version, before.mode) != (stage.version, stage.mode)):
            m.rollout_stage.labels(before.version, before.mode).set(0)
        if stage is None:
            return
        m.rollout_stage.labels(stage.version, stage.mode).set(1)
        m.rollout_percent.labels(stage.version).set(stage.percent if stage.mode == "canary" else 0)
        champion = self.classifier.current
        now = time.monotonic()
        if self.inference_log is None or champion is None or (stage == before and now - self._rollout_metrics_at < self.settings.rollout_metrics_seconds):
            return
        self._rollout_metrics_at = now
        w = self.inference_log.rollout_window(stage.started, (champion.name, str(champion.version)), (stage.name, stage.version))
        for role, side in (("champion", w.champion), ("challenger", w.challenger)):
            m.rollout_requests.labels(side.model_version, role).set(side.requests)
            m.rollout_errors.labels(side.model_version, role).set(side.errors)
            if side.live_accuracy is not None:
                m.rollout_live_accuracy.labels(side.model_version, role).set(side.live_accuracy)
        if w.agreement is not None:
            m.rollout_agreement.labels(stage.version).set(w.agreement)

    def _model(self):
        current = self.classifier.current
        if current is None:
            raise bentoml.exceptions.BentoMLException(f"no model loaded yet: {self.classifier.error}", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return current

    def _classify_paths(self, paths: list[Path], endpoint: str, canary: bool = False) -> list[dict[str, Any]]:
        """One answer per uploaded file; a bad file becomes an {"error", "status"} item (see BatchAnswers).
        `canary`: the request was routed to the challenger (CanaryRouter)."""
        t0 = time.perf_counter()
        model = self._model()  # one read: a swap mid-batch cannot mix versions
        out: list[dict[str, Any]] = []
        good: list[tuple[int, Image.Image, Path]] = []
        for path in paths:
            try:
                good.append((len(out), _read(path, self.settings), path))
                out.append({})
            except InputError as exc:
                out.append({"error": str(exc), "status": exc.status})
        if good:
            answers = self._answer(model, [img for _, img, _ in good], [p for _, _, p in good], endpoint, t0, canary=canary)
            for (i, _, _), answer in zip(good, answers):
                out[i] = answer
        return out

    def _predict(self, model, images: list[Image.Image], canary: bool) -> tuple[Any, list, list, list[dict]]:
        """(the model that answered, answers, stats, canary rows to log once the answers have ids).
        During a canary a routed request is answered by the challenger; if it fails, the champion
        answers and the failure is evidence in the log."""
        cur = rollout.STATE.current
        if canary and cur is not None and cur[0].mode == "canary":
            stage, challenger = cur
            t = time.perf_counter()
            try:
                answers, stats = challenger.predict(images)
                ms = (time.perf_counter() - t) * 1000
                return challenger, answers, stats, [rollout.rollout_row("", "canary", stage.name, stage.version, a, ms) for a in answers]
            except Exception as exc:
                ms = (time.perf_counter() - t) * 1000
                self._record_rollout([rollout.rollout_row(uuid.uuid4().hex, "canary", stage.name, stage.version, None, ms, exc) for _ in images])
        try:
            answers, stats = model.predict(images)
        except Exception as exc:
            if cur is not None:  # a champion failure during a rollout is evidence too (its latency is not: failures count in the error rate only)
                self._record_rollout([rollout.rollout_row(uuid.uuid4().hex, "champion", model.name, str(model.version), None, 0.0, exc) for _ in images])
            raise
        return model, answers, stats, []

    def _record_rollout(self, rows: list[dict]) -> None:
        if self.inference_log is None or not rows:
            return
        try:
            self.inference_log.record_rollout(rows)
        except Exception as exc:  # never fail a request over its evidence
            log.warning(json.dumps({"event": "rollout_log_failed", "error": str(exc)[:200]}))

    def _answer(self, model, images: list[Image.Image], uploads: list[Path | bytes], endpoint: str, t0: float, canary: bool = False) -> list[dict[str, Any]]:
        """Classify; give each image a request id; count it in /metrics and record it in the inference log.
        During a shadow stage the challenger answers the same images afterwards, off the response path."""
        model, answers, stats, canary_rows = self._predict(model, images, canary)
        latency_ms = (time.perf_counter() - t0) * 1000
        m = metrics()
        m.batch_size.observe(len(images))
        log_ = self.inference_log
        rows, kept = [], []
        for answer, (brightness, contrast), img, upload in zip(answers, stats, images, uploads):
            answer["request_id"] = uuid.uuid4().hex
            m.predictions.labels(model.version, answer["class_name"]).inc()
            m.confidence.labels(model.version).observe(answer["confidence"])
            if log_ is None or not log_.sampled():
                continue
            rows.append({
                "request_id": answer["request_id"], "ts": time.time(), "endpoint": endpoint, "model_name": model.name,
                "model_version": str(model.version), "data_version": model.tags.get("data_version"), "predicted": answer["class_name"],
                "confidence": answer["confidence"], "width": img.width, "height": img.height, "channels": len(img.getbands()),
                "brightness": brightness, "contrast": contrast, "latency_ms": latency_ms,
            })  # fmt: skip
            if log_.keep_images:
                data = upload.read_bytes() if isinstance(upload, Path) else upload
                kept.append((data, {"JPEG": "jpg", "MPO": "jpg"}.get(img.format or "", (img.format or "bin").lower())))
        if rows:
            try:
                log_.record(rows, kept or None, model.spec.classes)
            except Exception as exc:  # a full disk must not fail the prediction; say so once
                if not self._log_failed:
                    log.warning(json.dumps({"event": "inference_log_failed", "error": str(exc)[:200]}))
                    self._log_failed = True
        self._after_answer(model, images, answers, canary_rows)
        return answers

    def _after_answer(self, model, images: list[Image.Image], answers: list[dict[str, Any]], canary_rows: list[dict]) -> None:
        """Rollout bookkeeping once the answers exist: say who answered, log canary evidence, queue shadow work."""
        cur = rollout.STATE.current
        if cur is None:
            return
        stage, challenger = cur
        role = "challenger" if model is challenger else "champion"
        for answer in answers:
            answer["rollout"] = {"stage": stage.mode, "served_by": role}
        if canary_rows:
            self._record_rollout([{**row, "request_id": a["request_id"]} for row, a in zip(canary_rows, answers)])
        if stage.mode == "shadow" and role == "champion" and self.shadow is not None:
            sampled = [(img, a["request_id"]) for img, a in zip(images, answers) if stage.shadow_sample >= 1 or random.random() < stage.shadow_sample]
            if sampled:
                self.shadow.submit(stage, challenger, [img for img, _ in sampled], [rid for _, rid in sampled])

    if SETTINGS.batching:
        # BentoML's adaptive batching: concurrent requests' images are merged into one forward pass
        # (up to max_batch_size images, waiting at most max_latency_ms). A batched API answers a list
        # and one request's bad image must not fail the others in its batch, so errors travel as
        # items; BatchAnswers (middleware) turns them back into that request's 4xx and makes
        # /classify answer one object, exactly as without batching.
        @bentoml.api(route="/classify", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify(self, image: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(image, "/classify")

        @bentoml.api(route="/classify_batch", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify_batch(self, images: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(images, "/classify_batch")

        # the challenger's routes during a canary (CanaryRouter rewrites the path): their own batch queue
        @bentoml.api(route="/classify_canary", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify_canary(self, image: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(image, "/classify", canary=True)

        @bentoml.api(route="/classify_batch_canary", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify_batch_canary(self, images: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(images, "/classify_batch", canary=True)

    else:

        @bentoml.api(route="/classify")
        def classify(self, image: Path, ctx: bentoml.Context) -> dict[str, Any]:
            return self._classify_one(image, ctx, canary=False)

        @bentoml.api(route="/classify_canary")
        def classify_canary(self, image: Path, ctx: bentoml.Context) -> dict[str, Any]:
            return self._classify_one(image, ctx, canary=True)

        def _classify_one(self, image: Path, ctx: bentoml.Context, canary: bool) -> dict[str, Any]:
            t0 = time.perf_counter()
            model = self._model()  # one read: a swap mid-request cannot mix versions
            try:
                img = _read(image, self.settings)
            except InputError as exc:
                raise _http_error(exc) from None
            answer = self._answer(model, [img], [image], "/classify", t0, canary=canary)[0]
            ctx.response.headers["X-Model-Version"] = f"{answer['model']['name']}/{answer['model']['version']}"
            ctx.response.headers["X-Request-Id"] = answer["request_id"]
            return answer

        # A FastAPI route, not @bentoml.api: BentoML 1.4's multipart parser fails (HTTP 500) on a
        # non-batchable list field that carries a single file, and a bad image must be a 4xx.
        @probes.post("/classify_batch")
        def classify_batch(self, images: list[UploadFile] = File(default=[])):
            return self._classify_uploads(images, canary=False)

        @probes.post("/classify_batch_canary")
        def classify_batch_canary(self, images: list[UploadFile] = File(default=[])):
            return self._classify_uploads(images, canary=True)

        def _classify_uploads(self, images: list[UploadFile], canary: bool):
            t0 = time.perf_counter()
            model = self.classifier.current
            if model is None:
                return _json_error(f"no model loaded yet: {self.classifier.error}", 503)
            if not images:
                return _json_error("no images: send one or more multipart fields named 'images'", 400)
            decoded, raw = [], []
            for i, up in enumerate(images):
                try:
                    raw.append(up.file.read(self.settings.max_bytes + 1))
                    decoded.append(decode_image(raw[-1], self.settings.max_pixels, self.settings.max_bytes))
                except InputError as exc:
                    return _json_error(f"images[{i}] ({up.filename}): {exc}", exc.status)
            answers = self._answer(model, decoded, raw, "/classify_batch", t0, canary=canary)
            served = answers[0]["model"]
            return JSONResponse(answers, headers={"X-Model-Version": f"{served['name']}/{served['version']}"})

    @bentoml.api(route="/generate")
    def generate(self, n: int = 8, class_name: str | None = None, label: int | None = None, ctx: bentoml.Context = None) -> Image.Image:
        import torch

        gen = self.generator.current if self.generator else None
        if gen is None:
            raise bentoml.exceptions.BentoMLException("no generator is registered (alias `generator`)", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        classes = gen.spec.classes
        if class_name is not None and class_name not in classes:
            raise _http_error(InputError(f"unknown class_name {class_name!r}; known: {', '.join(classes)}", 422))
        if label is not None and not 0 <= label < len(classes):
            raise _http_error(InputError(f"label {label} out of range 0..{len(classes) - 1}", 422))
        if not 1 <= n <= self.settings.max_generate:
            raise _http_error(InputError(f"n={n} out of range 1..{self.settings.max_generate}", 422))
        if class_name is None and label is None:
            raise _http_error(InputError("give class_name or label", 422))
        k = classes.index(class_name) if class_name is not None else label
        with torch.no_grad():
            imgs = gen.model.sample(torch.full((n,), k, dtype=torch.long))
        if ctx is not None:
            ctx.response.headers["X-Model-Version"] = f"{gen.name}/{gen.version}"
        import io

        from serving.runtime import png_grid

        return Image.open(io.BytesIO(png_grid(imgs, nrow=min(n, 8))))

    # BentoML serves GET /healthz (and /livez, /readyz) itself: ready only once a model is loaded
    # and warmed up (__init__ loads it; if the registry had none yet, the poller will).
    def __is_alive__(self) -> bool:
        return self.classifier.current is not None

    def __is_ready__(self) -> bool:
        return self.classifier.current is not None

    @probes.post("/explain")
    def explain(self, image: UploadFile = File(...)):
        """The answer for one image (not logged: the page calls /classify for that) and where it came from."""
        model = self.classifier.current
        if model is None:
            return _json_error(f"no model loaded yet: {self.classifier.error}", 503)
        try:
            img = decode_image(image.file.read(self.settings.max_bytes + 1), self.settings.max_pixels, self.settings.max_bytes)
        except InputError as exc:
            return _json_error(str(exc), exc.status)
        if getattr(model, "runtime", "torch") != "torch":
            return _json_error(f"/explain needs gradients: {FULL_IMAGE_HINT}", 501)
        answer = model.classify([img])[0]
        overlay, method = model.explain(img)
        answer["explanation"] = {"method": method, "png": "data:image/png;base64," + base64.b64encode(overlay).decode()}
        return JSONResponse(answer, headers={"X-Model-Version": f"{model.name}/{model.version}"})

    @probes.post("/feedback")
    async def feedback(self, request: Request):
        """{"request_id": ..., "label": <class name>} → the prediction's true class, in the log and in /metrics."""
        from components.monitoring.inference_log import FeedbackError

        if self.inference_log is None:
            return _json_error("the inference log is off (VISIONFLOW_INFERENCE_LOG=off): there is no prediction to attach feedback to", 409)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return _json_error('body is not JSON: send {"request_id": "<from the answer>", "label": "<class name>"}', 400)
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str) or not isinstance(body.get("label"), str):
            return _json_error('send JSON {"request_id": "<from the answer>", "label": "<class name>"} (both strings)', 400)
        try:
            fb = await asyncio.to_thread(self.inference_log.feedback, body["request_id"], body["label"])
        except FeedbackError as exc:
            return _json_error(str(exc), 400)
        m = metrics()
        m.feedback.labels(fb.model_version, str(fb.correct).lower()).inc()
        m.live_accuracy.labels(fb.model_version).set(fb.live_accuracy)
        m.feedback_count.labels(fb.model_version).set(fb.n_feedback)
        return JSONResponse({"request_id": fb.request_id, "label": fb.label, "predicted": fb.predicted, "correct": fb.correct,
                             "model": {"name": fb.model_name, "version": fb.model_version}, "live_accuracy": fb.live_accuracy,
                             "feedback_count": fb.n_feedback}, headers={"X-Model-Version": f"{fb.model_name}/{fb.model_version}"})  # fmt: skip

    @probes.get("/")
    def page(self):
        from serving.page import PAGE

        return HTMLResponse(PAGE)

    @probes.get("/metadata")
    def metadata(self):
        current = self.classifier.current
        if current is None:
            return JSONResponse({"status": "loading", "error": self.classifier.error}, status_code=503)
        out = {**current.lineage(), "classes": current.spec.classes, "preprocessing": {
            "channels": current.spec.in_channels, "image_size": list(current.spec.image_size),
            "mean": current.spec.mean, "std": current.spec.std}, "metrics": current.metrics,
            "tags": current.tags, "source": self.settings.model_uri, "runtime": getattr(current, "runtime", "torch"),
            "inference_log": self.log_state}  # fmt: skip
        gen = self.generator.current if self.generator else None
        if gen is not None:
            out["generator"] = gen.lineage()
        stage = rollout.STATE.stage
        out["rollout"] = None if stage is None else {"stage": stage.mode, "challenger": {"name": stage.name, "version": stage.version},
                                                     "percent": stage.percent if stage.mode == "canary" else None,
                                                     "shadow_sample": stage.shadow_sample if stage.mode == "shadow" else None,
                                                     "shadow_dropped": rollout.STATE.dropped}  # fmt: skip
        if rollout.STATE.error:
            out["rollout_error"] = rollout.STATE.error
        return out


# outermost first: RequestContext checks the key and counts every answer (shed ones too); LoadShedder
# sheds before any parsing; BatchAnswers sees the batched API's answers
Visionflow.add_asgi_middleware(RequestContext, api_key=SETTINGS.api_key, open_paths=SETTINGS.open_paths, access_log=SETTINGS.access_log)
Visionflow.add_asgi_middleware(LoadShedder, limit=SETTINGS.max_in_flight)
if not HAS_TORCH:  # the slim image: the GAN and gradients need torch
    Visionflow.add_asgi_middleware(NotServedHere, paths={"/generate": f"/generate needs the GAN in PyTorch: {FULL_IMAGE_HINT}"})
Visionflow.add_asgi_middleware(MultipartGuard, fields={"/classify": ("image", False), "/classify_batch": ("images", True), "/explain": ("image", False)})
if SETTINGS.batching:
    Visionflow.add_asgi_middleware(BatchAnswers, one="/classify", many="/classify_batch")
if SETTINGS.rollout:  # innermost: the outer middlewares see the path the client sent
    Visionflow.add_asgi_middleware(rollout.CanaryRouter)
