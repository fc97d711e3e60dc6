"""The model side of the slim service: an exported classifier (components/packaging/onnx_export.py)
run by onnxruntime, with the interface of serving.runtime.LoadedModel.

This module must not import torch or mlflow, directly or through an import: the image it serves in
has neither. The preprocessing is the logged spec applied by components.data.preprocess (the same
conversion as training); softmax and rounding follow LoadedModel.predict, so answers match the
torch service's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from components.data.preprocess import DatasetSpec, normalize_batch, softmax, unit_batch
from serving.settings import answers, lineage_of

MODEL_FILE = "model.onnx"
SPEC_FILE = "spec.json"


class NotSupported(NotImplementedError):
    """A feature of the full (torch) service that the ONNX model cannot provide."""


class OnnxModel:
    runtime = "onnxruntime"  # LoadedModel's is "torch": the service tells what a model can do by it

    def __init__(self, onnx_path: Path, spec: DatasetSpec, name: str, version: str, run_id: str, tags: dict[str, str] | None = None,
                 metrics: dict[str, float] | None = None, threads: int = 1) -> None:  # fmt: skip
        """`threads`: onnxruntime's intra-op threads per forward (0: one per core); the service runs
        several workers and requests at once, so one thread each is the default."""
        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        self.model = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        self.spec, self.name, self.version, self.run_id = spec, name, str(version), run_id
        self.tags: dict[str, str] = dict(tags or {})
        self.metrics: dict[str, float] = dict(metrics or {})
        self.input_name = self.model.get_inputs()[0].name
        self.output_name = self.model.get_outputs()[0].name
        shape = self.model.get_inputs()[0].shape
        want = [spec.in_channels, *spec.image_size]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
            raise ValueError(f"{onnx_path} takes input {shape}, but its spec says (N, {', '.join(map(str, want))}): model and spec.json do not belong together")

    def lineage(self) -> dict[str, Any]:
        return lineage_of(self.name, self.version, self.run_id, self.tags)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the model's output for a normalised float32 batch (N, C, H, W)."""
        return softmax(self.model.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    def classify(self, images: list[Image.Image]) -> list[dict[str, Any]]:
        return self.predict(images)[0]

    def predict(self, images: list[Image.Image]) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
        """Answers, and each image's (brightness, contrast): mean and population std of the model's
        input pixels in 0..1 (before normalisation), as LoadedModel.predict gives them."""
        x01 = unit_batch(images, self.spec)
        probs = self.probabilities(normalize_batch(x01, self.spec))
        flat = x01.reshape(len(x01), -1)
        stats = list(zip(flat.mean(1).tolist(), flat.std(1).tolist()))
        out = answers(probs, self.spec.classes, self.lineage())
        return out, stats

    def explain(self, image: Image.Image) -> tuple[bytes, str]:
        raise NotSupported("explanations (Grad-CAM, saliency) need gradients, which the ONNX model does not have: "
                           "serve the full image (visionflow package --image --flavour full)")  # fmt: skip


def load_onnx_dir(path: Path, labels: dict[str, str], threads: int = 1) -> OnnxModel:
    """`path/model.onnx` with `path/spec.json`, named by the lineage labels the Bento model carries
    (registered_model, registered_version, run_id, data_version, ...), warmed up."""
    path = Path(path)
    labels = dict(labels)
    if labels.get("task") == "generation":
        raise ValueError(f"{path} holds a generator; the ONNX image serves classifiers only: serve the generator from the full image")
    spec = DatasetSpec.from_json((path / SPEC_FILE).read_text(encoding="utf-8"))
    model = OnnxModel(path / MODEL_FILE, spec, labels.get("registered_model", path.name), labels.get("registered_version", ""), labels.get("run_id", ""),
                      labels, {}, threads)  # fmt: skip
    model.probabilities(np.zeros((2, spec.in_channels, *spec.image_size), dtype=np.float32))  # the first request should not pay for lazy init
    return model
