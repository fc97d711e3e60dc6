"""What the service needs besides BentoML: load a registered model with its preprocessing and
lineage, decode untrusted uploads safely, and swap models atomically when an alias moves.

The preprocessing is the spec logged with the model (channels, size, mean/std), applied with the
same conversion function as training (`components.data.datasets.to_array`), never re-declared here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from components.data.datasets import DatasetSpec, to_array

log = logging.getLogger("visionflow.serving")
IMAGE_FORMATS = {"PNG", "JPEG", "BMP", "MPO"}  # MPO: camera JPEGs


class InputError(ValueError):
    """A request the client must fix (HTTP 4xx); the message says what was wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    model_uri: str = "models:/visionflow-classifier@champion"
    generator_uri: str | None = "models:/visionflow-gan@generator"
    poll_seconds: float = 5.0
    max_pixels: int = 16_000_000
    max_bytes: int = 10 * 1024 * 1024
    max_generate: int = 64
    # process shape, measured side by side in benchmarks/bench_serving.py (README: Serving numbers)
    workers: int = 2
    max_in_flight: int = 32  # per worker; beyond it a 503 with Retry-After (load shedding)
    batching: bool = True  # concurrent requests share one forward pass (BentoML batchable APIs)
    max_batch_size: int = 32
    max_latency_ms: int = 500  # BentoML's dispatcher answers 503 (no Retry-After) when it expects to miss this
    access_log: bool = False  # one log line per request costs throughput; on for debugging
    torch_threads: int = 1  # small models: one intra-op thread leaves the other core to HTTP

    @classmethod
    def from_env(cls) -> "Settings":
        """Environment first; inside a Bento, serving/bento_defaults.json names the packaged models."""
        from pathlib import Path

        defaults_file = Path(__file__).with_name("bento_defaults.json")
        defaults = json.loads(defaults_file.read_text()) if defaults_file.exists() else {}
        env = {**defaults, **os.environ}
        gen = env.get("VISIONFLOW_GENERATOR_URI", cls.generator_uri)
        return cls(
            model_uri=env.get("VISIONFLOW_MODEL_URI", cls.model_uri),
            generator_uri=None if gen in ("", "none") else gen,
            poll_seconds=float(env.get("VISIONFLOW_POLL_SECONDS", cls.poll_seconds)),
            max_pixels=int(env.get("VISIONFLOW_MAX_PIXELS", cls.max_pixels)),
            max_bytes=int(env.get("VISIONFLOW_MAX_BYTES", cls.max_bytes)),
            workers=int(env.get("VISIONFLOW_WORKERS", cls.workers)),
            max_in_flight=int(env.get("VISIONFLOW_MAX_IN_FLIGHT", cls.max_in_flight)),
            batching=_flag(env.get("VISIONFLOW_BATCHING"), cls.batching),
            max_batch_size=int(env.get("VISIONFLOW_MAX_BATCH_SIZE", cls.max_batch_size)),
            max_latency_ms=int(env.get("VISIONFLOW_MAX_LATENCY_MS", cls.max_latency_ms)),
            access_log=_flag(env.get("VISIONFLOW_ACCESS_LOG"), cls.access_log),
            torch_threads=int(env.get("VISIONFLOW_TORCH_THREADS", cls.torch_threads)),
        )


def _flag(value: str | None, default: bool) -> bool:
    return default if value in (None, "") else value.strip().lower() in ("1", "true", "on", "yes")


class LoadShedder:
    """ASGI middleware: at most `limit` requests in flight per worker; beyond it a deliberate 503
    with Retry-After, answered at once (BentoML's own limit answers 429 without Retry-After).
    Probes, metadata and metrics always pass, so an overloaded server still reports itself."""

    BYPASS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/metadata"})

    def __init__(self, app, limit: int, retry_after_s: int = 1):
        self.app, self.limit, self.retry_after = app, limit, str(retry_after_s).encode()
        self.in_flight = 0  # one event loop per worker: no lock needed
        self.body = json.dumps({"error": f"server busy: {limit} requests in flight; retry after {retry_after_s} s"}).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.BYPASS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            headers = [(b"content-type", b"application/json"), (b"retry-after", self.retry_after), (b"content-length", str(len(self.body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": self.body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def decode_image(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
    """Untrusted bytes → a loaded PIL image, or an InputError that says what was wrong."""
    if not data:
        raise InputError("empty image: the 'image' field has no bytes")
    if len(data) > max_bytes:
        raise InputError(f"image is {len(data):,} bytes, over the {max_bytes:,}-byte cap", 413)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception:
        raise InputError("not an image: expected PNG, JPEG or BMP bytes") from None
    if img.format not in IMAGE_FORMATS:
        raise InputError(f"unsupported image format {img.format}: send PNG, JPEG or BMP")
    w, h = img.size
    if w * h > max_pixels:  # checked from the header, before decoding: decompression bombs
        raise InputError(f"image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel cap", 413)
    try:
        img.load()
    except Exception as exc:
        raise InputError(f"truncated or corrupt image: {str(exc).splitlines()[0][:120]}") from None
    return img


@dataclass
class LoadedModel:
    model: torch.nn.Module
    spec: DatasetSpec
    name: str
    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        return {
            "model": {"name": self.name, "version": self.version, "run_id": self.run_id},
            "data_version": self.tags.get("data_version"),
            "params_hash": self.tags.get("params_hash"),
            "git_commit": self.tags.get("git_commit"),
        }

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        s = self.spec
        x = torch.from_numpy(np.stack([to_array(img, s.in_channels, s.image_size) for img in images])).float().div_(255)
        mean = torch.tensor(s.mean).view(1, -1, 1, 1)
        std = torch.tensor(s.std).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def classify(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        probs = torch.softmax(self.model(self.preprocess(images)).float(), 1)
        out = []
        for p in probs:
            label = int(p.argmax())
            out.append({
                "label": label, "class_name": self.spec.classes[label],
                "probabilities": {c: round(float(v), 6) for c, v in zip(self.spec.classes, p)},
                **self.lineage(),
            })  # fmt: skip
        return out


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION → (name, alias, version)."""
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    name, _, version = body.partition("/")
    return name, None, version or None


def resolve_version(uri: str) -> tuple[str, str]:
    """(registered name, version) that `uri` points at now (`bento:NAME:VERSION` never moves)."""
    from mlflow import MlflowClient

    if uri.startswith("bento:"):
        import bentoml

        tag = bentoml.models.get(uri.removeprefix("bento:")).tag
        return tag.name, str(tag.version)
    name, alias, version = _parse_models_uri(uri)
    c = MlflowClient()
    if alias:
        return name, str(c.get_model_version_by_alias(name, alias).version)
    return name, str(version)


def load_bento_model(uri: str) -> LoadedModel:
    """A model imported into the BentoML store by `visionflow package` (inside a Bento)."""
    import bentoml
    import mlflow

    bm = bentoml.models.get(uri.removeprefix("bento:"))
    path = bm.path_of("mlflow_model")
    model = mlflow.pytorch.load_model(path, map_location="cpu").eval()
    meta = mlflow.models.Model.load(path).metadata or {}
    spec = DatasetSpec.from_json(json.dumps(meta["visionflow_spec"]))
    labels = dict(bm.info.labels)
    return _warm(LoadedModel(model, spec, labels.get("registered_model", bm.tag.name), labels.get("registered_version", str(bm.tag.version)),
                             labels.get("run_id", ""), labels, {}))  # fmt: skip


def _warm(loaded: LoadedModel) -> LoadedModel:
    with torch.no_grad():  # the first request should not pay for lazy init
        if loaded.tags.get("task") == "generation":
            loaded.model(torch.tensor([0, 0]))
        else:
            loaded.model(torch.zeros(2, loaded.spec.in_channels, *loaded.spec.image_size))
    return loaded


def load_registered(uri: str) -> LoadedModel:
    """Load a registered version with its logged preprocessing spec and lineage tags, warmed up."""
    import mlflow
    from mlflow import MlflowClient

    if uri.startswith("bento:"):
        return load_bento_model(uri)
    name, version = resolve_version(uri)
    exact = f"models:/{name}/{version}"
    mv = MlflowClient().get_model_version(name, version)
    model = mlflow.pytorch.load_model(exact, map_location="cpu").eval()
    spec = DatasetSpec.from_json(json.dumps(mlflow.models.get_model_info(exact).metadata["visionflow_spec"]))
    metrics = {}
    if mv.run_id:
        try:
            metrics = {k: v for k, v in MlflowClient().get_run(mv.run_id).data.metrics.items() if k.startswith("test_") or k in ("gan_test", "gan_train", "val_acc")}
        except Exception:  # the run may live in another store; lineage tags are on the version anyway
            metrics = {}
    return _warm(LoadedModel(model, spec, name, version, mv.run_id or "", dict(mv.tags or {}), metrics))


class ModelSlot:
    """The current model behind an alias. Requests read `current` once; a poller loads and warms a
    new version off the request path, then swaps the reference (atomic in CPython)."""

    def __init__(self, uri: str, loader=load_registered):
        self.uri, self.loader = uri, loader
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the alias's version if it changed; True when a swap happened."""
        with self._lock:
            try:
                name, version = resolve_version(self.uri)
                if self.current is not None and (self.current.name, self.current.version) == (name, version):
                    return False
                new = self.loader(self.uri)
            except Exception as exc:  # keep serving the old model; report on /healthz
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("could not load %s: %s", self.uri, self.error)
                return False
            old = self.current
            self.current, self.error = new, None
            log.info("serving %s v%s (was %s)", new.name, new.version, old.version if old else None)
            return True

    def poll_forever(self, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            self.refresh()


def start_poller(slots: list[ModelSlot], seconds: float) -> threading.Event:
    stop = threading.Event()
    for slot in slots:
        threading.Thread(target=slot.poll_forever, args=(seconds, stop), daemon=True, name=f"poll-{slot.uri}").start()
    return stop


def png_grid(images01: torch.Tensor, nrow: int) -> bytes:
    from torchvision.utils import make_grid

    grid = make_grid(images01, nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


class BatchAnswers:
    """ASGI middleware for the batched APIs (`Settings.batching`). A batched API answers one item
    per image, and an item {"error", "status"} (a bad image) becomes that request's 4xx, so one
    client's bad upload never fails the requests it was batched with. `one` (/classify) answers a
    single object, as without batching; X-Model-Version is added as on every other answer."""

    def __init__(self, app, one: str, many: str):
        self.app, self.one, self.many = app, one, many

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in (self.one, self.many):
            return await self.app(scope, receive, send)
        single = scope["path"] == self.one
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status, body = start["status"], b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", b"1"))  # BentoML's dispatcher sheds load too, without saying when to retry
            items = _json_list(body) if status == 200 else None
            if items is not None:
                status, answer = _one_answer(items, single)
                body = json.dumps(answer).encode()
                if status == 200:
                    m = (answer if single else answer[0])["model"]
                    headers.append((b"x-model-version", f"{m['name']}/{m['version']}".encode()))
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def _one_answer(items: list, single: bool) -> tuple[int, Any]:
    if not items:
        return 400, {"error": "no images: send one or more multipart fields named 'images'"}
    if single and len(items) != 1:
        return 400, {"error": f"/classify takes one image (got {len(items)}); send several to /classify_batch"}
    for i, it in enumerate(items):
        if isinstance(it, dict) and "error" in it:
            return int(it.get("status", 400)), {"error": it["error"] if single else f"images[{i}]: {it['error']}"}
    return 200, items[0] if single else items


def _json_list(body: bytes) -> list | None:
    try:
        items = json.loads(body)
    except ValueError:
        return None
    return items if isinstance(items, list) else None
