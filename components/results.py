"""What crosses a task boundary of the training pipeline: small frozen records (paths, run ids,
numbers), never a model object. Each is hashable (its dict-valued fields take no part in the hash)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainedModel:
    """A trained family model on disk (`model.pt`) and the MLflow run that holds its record in this
    pipeline run. `cached_from` names the run that trained it when it came from the cache."""

    key: str
    model: str  # registered model name (components/models)
    family: str  # the report's family column
    path: str  # the model file (components/training/runner.save_trained)
    run_id: str = ""
    parent_id: str = ""
    cache_key: str = ""
    val_acc: float | None = None  # classifiers and fusions; None for a generator
    best_epoch: int = -1
    epochs_run: int = 0
    train_seconds: float = 0.0
    img_per_s: float = 0.0
    device: str = "cpu"
    history_path: str | None = None  # a generator's per-epoch losses (the evaluation plots them)
    cached_from: str | None = None

    @property
    def cached(self) -> bool:
        return self.cached_from is not None


@dataclass(frozen=True)
class FusedModel(TrainedModel):
    """A decision fusion y = α·f1(x) + (1−α)·f2(x) of two trained members, α chosen on validation."""

    alpha: float = 0.5
    temperatures: tuple[float, float] = (1.0, 1.0)
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """A classifier's test-split evaluation, its validation figures for the choice, and its logged model."""

    key: str
    family: str
    run_id: str  # the run the figures are logged on
    model_uri: str  # the MLflow logged model registration points at
    path: str
    val_acc: float
    val_robust: float  # mean validation accuracy under the evaluation's noise and FGSM attacks
    correct_path: str  # test_correct.json: per-image correctness, manifest order (the champion gate pairs on it)
    metrics: dict[str, float] = field(default_factory=dict, hash=False, compare=False)
    images: tuple[str, ...] = ()
    cached_from: str | None = None  # the run that computed these figures, when they came from the cache

    @property
    def row(self) -> dict[str, Any]:
        """The report's row (per-class accuracies stay in MLflow)."""
        return {"model": self.key, "family": self.family, **{k: v for k, v in self.metrics.items() if not k.startswith("acc_class_")}}


@dataclass(frozen=True)
class GanEvaluation:
    """A generator's GAN-test / GAN-train figures, plots and logged model."""

    key: str
    run_id: str
    model_uri: str
    gan_test: float
    gan_train: float
    params: int
    images: tuple[str, ...] = ()
    cached_from: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return {"gan_test": self.gan_test, "gan_train": self.gan_train}

    @property
    def row(self) -> dict[str, Any]:
        return {"model": self.key, "family": "gan", **self.metrics, "params": self.params}


def weights_digest(model_path: str | Path) -> str:
    """A digest of what a saved model computes (name, hyper-parameters, preprocessing contract,
    weights), independent of how the file was written: two trainings with equal weights match."""
    import torch

    blob = torch.load(model_path, map_location="cpu", weights_only=True)
    h = hashlib.sha256(json.dumps({k: blob[k] for k in ("model_name", "hparams", "spec")}, sort_keys=True, default=str).encode())
    for name in sorted(blob["state_dict"]):
        t = blob["state_dict"][name].contiguous()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
