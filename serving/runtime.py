"""The model side of the service (only the worker processes load it): load a registered model with
its preprocessing and lineage, and swap models atomically when an alias moves.

The preprocessing is the spec logged with the model (channels, size, mean/std), applied with the
same conversion function as training (`components.data.preprocess.to_array`), never re-declared here.
torch is imported only where a PyTorch model is loaded or run: the slim image serves an ONNX export
(`serving.onnx_model`) and has no torch at all.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from components.data.preprocess import DatasetSpec
from serving.settings import answers, lineage_of

log = logging.getLogger("visionflow.serving")


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module
    spec: DatasetSpec
    name: str
    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def lineage(self) -> dict[str, Any]:
        return lineage_of(self.name, self.version, self.run_id, self.tags)

    runtime = "torch"

    def classify(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        return self.predict(images)[0]

    def predict(self, images: list[Image.Image]) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
        """Answers, and each image's (brightness, contrast): mean and std of the model's input pixels
        in 0..1 (after the training conversion, before normalisation: the scale of data_stats)."""
        import torch

        from components.data.datasets import normalize, to_unit

        x01 = to_unit(images, self.spec)
        with torch.no_grad():
            probs = torch.softmax(self.model(normalize(x01, self.spec)).float(), 1)
        flat = x01.flatten(1)
        stats = list(zip(flat.mean(1).tolist(), flat.std(1, correction=0).tolist()))  # population std: pooled exactly by the monitor
        out = answers(probs, self.spec.classes, self.lineage())
        return out, stats

    def explain(self, image: Image.Image) -> tuple[bytes, str]:
        """A PNG of the model's input with where the answer came from laid over it in red (Grad-CAM
        for convolutional models, gradient saliency otherwise — as the report's figure), and the method."""
        import numpy as np

        from components.data.datasets import to_unit
        from components.evaluation.explain import explain

        x01 = to_unit([image], self.spec)
        maps, method = explain(self.model, x01, self.spec)
        heat = maps[0].numpy()[..., None]
        base = x01[0].mean(0).numpy() if self.spec.in_channels == 1 else x01[0].permute(1, 2, 0).numpy()
        rgb = np.repeat(base[..., None], 3, 2) if base.ndim == 2 else base
        mixed = rgb * (1 - 0.6 * heat) + np.array([1.0, 0.0, 0.0]) * 0.6 * heat
        img = Image.fromarray((mixed.clip(0, 1) * 255).round().astype(np.uint8))
        scale = max(1, 224 // max(img.size))  # small inputs (28 px digits) enlarged for the page
        buf = io.BytesIO()
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(buf, format="PNG")
        return buf.getvalue(), method


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
    if uri.startswith("bento:"):
        import bentoml

        tag = bentoml.models.get(uri.removeprefix("bento:")).tag
        return tag.name, str(tag.version)
    from mlflow import MlflowClient

    name, alias, version = _parse_models_uri(uri)
    c = MlflowClient()
    if alias:
        return name, str(c.get_model_version_by_alias(name, alias).version)
    return name, str(version)


def load_bento_model(uri: str):
    """A model imported into the BentoML store by `visionflow package` (inside a Bento): the logged
    PyTorch model, or its ONNX export (served by onnxruntime, no torch import)."""
    import os
    from pathlib import Path

    import bentoml

    bm = bentoml.models.get(uri.removeprefix("bento:"))
    labels = dict(bm.info.labels)
    if (Path(bm.path) / "model.onnx").is_file():
        from serving.onnx_model import load_onnx_dir

        return load_onnx_dir(Path(bm.path), labels, threads=max(1, int(os.environ.get("VISIONFLOW_TORCH_THREADS", "1") or 1)))
    from components.tracking.mlflow_store import load_logged_model

    model, spec = load_logged_model(bm.path_of("mlflow_model"))
    return _warm(LoadedModel(model, spec, labels.get("registered_model", bm.tag.name), labels.get("registered_version", str(bm.tag.version)),
                             labels.get("run_id", ""), labels, {}))  # fmt: skip


def _warm(loaded: LoadedModel) -> LoadedModel:
    import torch

    with torch.no_grad():  # the first request should not pay for lazy init
        if loaded.tags.get("task") == "generation":
            loaded.model(torch.tensor([0, 0]))
        else:
            loaded.model(torch.zeros(2, loaded.spec.in_channels, *loaded.spec.image_size))
    return loaded


def load_registered(uri: str) -> LoadedModel:
    """Load a registered version with its logged preprocessing spec and lineage tags, warmed up."""
    if uri.startswith("bento:"):
        return load_bento_model(uri)
    from mlflow import MlflowClient

    from components.tracking.mlflow_store import load_logged_model

    name, version = resolve_version(uri)
    mv = MlflowClient().get_model_version(name, version)
    model, spec = load_logged_model(f"models:/{name}/{version}")
    metrics = {}
    if mv.run_id:
        try:
            metrics = {
                k: v for k, v in MlflowClient().get_run(mv.run_id).data.metrics.items() if k.startswith("test_") or k in ("gan_test", "gan_train", "val_acc")
            }
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
        self._loaded_key: tuple[str, str] | None = None  # what resolve_version said when `current` was loaded
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the alias's version if it changed; True when a swap happened. Compared by what the URI
        resolves to (a `bento:` model's store tag differs from the registered name/version it labels)."""
        with self._lock:
            try:
                key = resolve_version(self.uri)
                if self.current is not None and self._loaded_key == key:
                    return False
                new = self.loader(self.uri)
                self._loaded_key = key
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


def png_grid(images01, nrow: int) -> bytes:
    import torch
    from torchvision.utils import make_grid

    grid = make_grid(images01, nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()
