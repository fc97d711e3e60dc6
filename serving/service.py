"""The visionflow HTTP service (BentoML 1.4 service class): the MLflow champion, served.

    bentoml serve serving.service:Visionflow --host 127.0.0.1 --port 3000   (or `visionflow serve`)

- POST /classify        multipart field `image` (PNG/JPEG/BMP, any size, gray or RGB)
- POST /classify_batch  multipart fields `images` (one or more files) → one answer per image
- POST /generate        JSON {"class_name" or "label", "n"} → PNG grid from the `generator` alias
- GET  /healthz         200 only when the model is loaded and warmed up
- GET  /metadata        the model, its metrics and full lineage
The model version is in every answer and in the `X-Model-Version` header. When the alias moves, a
poller loads and warms the new version, then swaps it in: no restart, no failed request.
Settings come from the environment (serving/settings.py: VISIONFLOW_MODEL_URI, VISIONFLOW_BATCHING, ...).
"""

from __future__ import annotations

import os
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

from components.tracking.mlflow_store import default_uri
from components.workspace import Workspace

_ws = Workspace.at(os.environ.get("VISIONFLOW_ROOT", "."))
_ws.activate()  # tool state in the workspace, telemetry off
os.environ.setdefault("MLFLOW_TRACKING_URI", default_uri(_ws))  # the workspace's registry unless told otherwise

# torch and the models load in the worker processes only (serving.runtime, imported in __init__):
# BentoML's supervisor imports this module for its config, and torch would cost it ~0.5 GB
from serving.settings import BatchAnswers, InputError, LoadShedder, MultipartGuard, Settings, cap_batch_wait, decode_image  # noqa: E402

SETTINGS = Settings.from_env()  # the process shape (workers, batching) is fixed when the service is defined
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


@bentoml.asgi_app(probes, path="/")
@bentoml.service(name="visionflow", workers=SETTINGS.workers, traffic={"timeout": 30}, logging={"access": {"enabled": SETTINGS.access_log}})
class Visionflow:
    def __init__(self) -> None:
        import torch

        from serving.runtime import ModelSlot, start_poller

        if SETTINGS.torch_threads > 0:  # small models: fewer intra-op threads leave cores to HTTP handling
            torch.set_num_threads(SETTINGS.torch_threads)
        self.settings = SETTINGS
        self.classifier = ModelSlot(self.settings.model_uri)
        self.generator = ModelSlot(self.settings.generator_uri) if self.settings.generator_uri else None
        for slot in filter(None, (self.classifier, self.generator)):
            slot.refresh()  # load + warm before the first request
        self._stop = start_poller([s for s in (self.classifier, self.generator) if s], self.settings.poll_seconds)
        import gc

        gc.collect()
        gc.freeze()  # the ~1M long-lived objects of torch/mlflow/the model leave the GC's scans: no long pauses

    def _model(self):
        current = self.classifier.current
        if current is None:
            raise bentoml.exceptions.BentoMLException(f"no model loaded yet: {self.classifier.error}", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return current

    def _classify_paths(self, paths: list[Path]) -> list[dict[str, Any]]:
        """One answer per uploaded file; a bad file becomes an {"error", "status"} item (see BatchAnswers)."""
        model = self._model()  # one read: a swap mid-batch cannot mix versions
        out: list[dict[str, Any]] = []
        good: list[tuple[int, Image.Image]] = []
        for path in paths:
            try:
                good.append((len(out), _read(path, self.settings)))
                out.append({})
            except InputError as exc:
                out.append({"error": str(exc), "status": exc.status})
        for (i, _), answer in zip(good, model.classify([img for _, img in good]) if good else []):
            out[i] = answer
        return out

    if SETTINGS.batching:
        # BentoML's adaptive batching: concurrent requests' images are merged into one forward pass
        # (up to max_batch_size images, waiting at most max_latency_ms). A batched API answers a list
        # and one request's bad image must not fail the others in its batch, so errors travel as
        # items; BatchAnswers (middleware) turns them back into that request's 4xx and makes
        # /classify answer one object, exactly as without batching.
        @bentoml.api(route="/classify", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify(self, image: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(image)

        @bentoml.api(route="/classify_batch", batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
        def classify_batch(self, images: list[Path]) -> list[dict[str, Any]]:
            return self._classify_paths(images)

    else:

        @bentoml.api(route="/classify")
        def classify(self, image: Path, ctx: bentoml.Context) -> dict[str, Any]:
            model = self._model()  # one read: a swap mid-request cannot mix versions
            try:
                img = _read(image, self.settings)
            except InputError as exc:
                raise _http_error(exc) from None
            ctx.response.headers["X-Model-Version"] = f"{model.name}/{model.version}"
            return model.classify([img])[0]

        # A FastAPI route, not @bentoml.api: BentoML 1.4's multipart parser fails (HTTP 500) on a
        # non-batchable list field that carries a single file, and a bad image must be a 4xx.
        @probes.post("/classify_batch")
        def classify_batch(self, images: list[UploadFile] = File(default=[])):
            model = self.classifier.current
            if model is None:
                return JSONResponse({"error": f"no model loaded yet: {self.classifier.error}"}, status_code=503)
            if not images:
                return JSONResponse({"error": "no images: send one or more multipart fields named 'images'"}, status_code=400)
            decoded = []
            for i, up in enumerate(images):
                try:
                    data = up.file.read(self.settings.max_bytes + 1)
                    decoded.append(decode_image(data, self.settings.max_pixels, self.settings.max_bytes))
                except InputError as exc:
                    return JSONResponse({"error": f"images[{i}] ({up.filename}): {exc}"}, status_code=exc.status)
            return JSONResponse(model.classify(decoded), headers={"X-Model-Version": f"{model.name}/{model.version}"})

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

    @probes.get("/metadata")
    def metadata(self):
        current = self.classifier.current
        if current is None:
            return JSONResponse({"status": "loading", "error": self.classifier.error}, status_code=503)
        out = {**current.lineage(), "classes": current.spec.classes, "preprocessing": {
            "channels": current.spec.in_channels, "image_size": list(current.spec.image_size),
            "mean": current.spec.mean, "std": current.spec.std}, "metrics": current.metrics,
            "tags": current.tags, "source": self.settings.model_uri}  # fmt: skip
        gen = self.generator.current if self.generator else None
        if gen is not None:
            out["generator"] = gen.lineage()
        return out


# outermost first: LoadShedder sheds before any parsing; BatchAnswers sees the batched API's answers
Visionflow.add_asgi_middleware(LoadShedder, limit=SETTINGS.max_in_flight)
Visionflow.add_asgi_middleware(MultipartGuard, fields={"/classify": ("image", False), "/classify_batch": ("images", True)})
if SETTINGS.batching:
    Visionflow.add_asgi_middleware(BatchAnswers, one="/classify", many="/classify_batch")
