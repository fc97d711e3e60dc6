"""GAN-test and GAN-train (Shmelkov et al., 2018), with the conditioning label as the truth.

- GAN-test: a classifier trained on real data labels generated images → precision-like score.
- GAN-train: a classifier trained only on generated images, tested on the real test split →
  recall/diversity-like score. Same generator for both.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from components.config import EngineConfig, TrainConfig
from components.data.datasets import DatasetSpec, ImageTensors
from components.models import create_model
from components.models.gan import ConditionalDCGAN
from components.training.classifier import Batcher, evaluate, fit


def generate(gan: ConditionalDCGAN, n_per_class: int, seed: int = 0) -> ImageTensors:
    """n_per_class images of every class, as uint8 tensors (the training-data format)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(gan.parameters()).device
    labels = torch.arange(gan.num_classes).repeat_interleave(n_per_class)
    # each chunk to uint8 at once: 10,000 RGB images at 64 px are 0.5 GB as floats, 0.12 GB as bytes
    chunks = [(gan.sample(labels[i : i + 500].to(device), generator=gen) * 255).round().to(torch.uint8).cpu() for i in range(0, len(labels), 500)]
    x = torch.cat(chunks)
    return ImageTensors(x, labels, [])


def gan_test(gan: ConditionalDCGAN, classifier: nn.Module, spec: DatasetSpec, n: int = 1000, seed: int = 0) -> float:
    fake = generate(gan, max(1, n // gan.num_classes), seed)
    device = next(classifier.parameters()).device
    return evaluate(classifier, fake, Batcher(spec, device, channels_last=False))["acc"]


def gan_train(
    gan: ConditionalDCGAN,
    spec: DatasetSpec,
    real_test: ImageTensors,
    *,
    n: int = 10_000,
    cfg: TrainConfig = TrainConfig(epochs=4, augment="shift", noise_sigma=0.0, patience=100),
    workdir: Path,
    engine: EngineConfig = EngineConfig(progress=False),
    seed: int = 0,
    cnn_hparams: dict | None = None,
) -> float:
    """Train the cnn recipe on generated images only (fixed epochs, no choices), test on real data."""
    fake = generate(gan, max(1, n // gan.num_classes), seed + 1)
    fake_val = generate(gan, max(1, 200 // gan.num_classes), seed + 2)
    torch.manual_seed(seed)
    model = create_model("cnn", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, **(cnn_hparams or {}))
    fit(model, fake, fake_val, spec, cfg, engine, workdir=workdir, label="gan-train cnn")
    # fixed recipe: use the last epoch's weights, not a checkpoint chosen on anything
    last = torch.load(workdir / "last.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(last["model"])
    device = next(model.parameters()).device
    return evaluate(model, real_test, Batcher(spec, device, channels_last=False))["acc"]
