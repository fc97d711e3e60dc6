"""Evaluate saved models (paths in, small dicts out): a report row, plot paths, paired predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from components.config import EngineConfig, EvaluationConfig, TrainConfig
from components.data.datasets import load_spec_split
from components.evaluation.gan_metrics import gan_test, gan_train, generate
from components.evaluation.metrics import evaluate_classifier, probabilities, robustness
from components.evaluation.plots import confusion_matrix_png, explanation_png, gan_grid_png, loss_curves_png
from components.models import family_of
from components.training.runner import load_trained


def evaluate_classifier_file(key: str, model_path: str, data_dir: Path, out_dir: Path, cfg: EvaluationConfig) -> dict[str, Any]:
    model, spec = load_trained(model_path)
    test = load_spec_split(data_dir, "test", spec)
    ev = evaluate_classifier(model, spec, test, latency_runs=cfg.latency_runs, noise=cfg.noise_sigmas, eps=cfg.fgsm_eps)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [
        confusion_matrix_png(ev.confusion, spec.classes, f"{key}: test confusion matrix", out_dir / "confusion_matrix.png"),
        explanation_png(model, spec, test, out_dir, per_class=cfg.saliency_per_class),
    ]
    val = load_spec_split(data_dir, "val", spec)  # for selection.robustness_weight: a choice, so on validation
    val_robust = robustness(model, val.x.float() / 255, val.y, spec, noise=cfg.noise_sigmas, eps=cfg.fgsm_eps)
    correct_path = out_dir / "test_correct.json"
    correct_path.write_text(json.dumps({"paths": test.paths, "correct": ev.correct}))
    blob = torch.load(model_path, map_location="cpu", weights_only=True)
    row = {"model": key, "family": family_of(blob["model_name"]), **{k: v for k, v in ev.flat_metrics().items() if not k.startswith("acc_class_")}}
    return {"row": row, "metrics": ev.flat_metrics(), "images": [str(p) for p in images], "correct_path": str(correct_path),
            "val_robust": sum(val_robust.values()) / max(len(val_robust), 1)}  # fmt: skip


def evaluate_gan_file(gan_path: str, judge_path: str, data_dir: Path, out_dir: Path, cfg: EvaluationConfig, history: list[dict],
                      seed: int = 0, cnn_hparams: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """GAN-test with the judge classifier, GAN-train with a fresh cnn, sample grid, loss curves."""
    gan, spec = load_trained(gan_path)
    judge, _ = load_trained(judge_path)
    real_test = load_spec_split(data_dir, "test", spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    g_test = gan_test(gan, judge, spec, n=cfg.gan_test_samples, seed=seed)
    g_train = gan_train(gan, spec, real_test, n=cfg.gan_train_samples,
                        cfg=TrainConfig(epochs=cfg.gan_train_epochs, augment="shift", noise_sigma=0.0, patience=10_000, seed=seed),
                        workdir=out_dir / "gan_train", engine=EngineConfig(progress=False), seed=seed,
                        cnn_hparams=cnn_hparams)  # fmt: skip
    per_class = 8
    grid = generate(gan, per_class, seed=seed + 7)
    images = [
        gan_grid_png(grid.x.float() / 255, per_class, out_dir / "samples_per_class.png"),
        loss_curves_png(history, ["d_loss", "g_loss"], "GAN losses per epoch", out_dir / "losses.png"),
    ]
    row = {"model": "gan", "family": "gan", "gan_test": g_test, "gan_train": g_train,
           "params": sum(p.numel() for p in gan.generator.parameters())}  # fmt: skip
    return {"row": row, "metrics": {"gan_test": g_test, "gan_train": g_train}, "images": [str(p) for p in images]}


def paired_correct(model_uri_or_path: str, data_dir: Path, loader) -> list[bool]:
    """Correctness of a (champion) model on this data's test split, in manifest order."""
    model, spec = loader(model_uri_or_path)
    test = load_spec_split(data_dir, "test", spec)
    return (probabilities(model, test.x.float() / 255, spec).argmax(1) == test.y).tolist()
