"""Classifier evaluation on the test split — the paper's Table 4.1 columns, measured:
accuracy, macro-F1, per-class accuracy, confusion matrix, calibration (ECE) via torchmetrics;
parameters, GFLOPs per image (torch's flop counter), CPU latency (batch 1, p50/p95) and throughput
(batch 64); robustness to Gaussian noise and to FGSM.

Noise σ and FGSM ε are in units of the pixel range ([0, 1]); perturbed images are clamped to it and
then normalised exactly as in training.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.data.datasets import DatasetSpec, ImageTensors


@dataclass
class ClassifierEvaluation:
    accuracy: float
    macro_f1: float
    ece: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]
    params: int
    gflops: float
    latency_ms_p50: float
    latency_ms_p95: float
    throughput_img_s: float
    robustness: dict[str, float] = field(default_factory=dict)  # acc_noise_0.1, acc_fgsm_0.05, ...
    correct: list[bool] = field(default_factory=list)  # per test image, for McNemar

    def flat_metrics(self) -> dict[str, float]:
        out = {
            "accuracy": self.accuracy, "macro_f1": self.macro_f1, "ece": self.ece, "params": float(self.params),
            "gflops": self.gflops, "latency_ms_p50": self.latency_ms_p50, "latency_ms_p95": self.latency_ms_p95,
            "throughput_img_s": self.throughput_img_s, **self.robustness,
        }  # fmt: skip
        out.update({f"acc_class_{i}": a for i, a in enumerate(self.per_class_accuracy)})
        return out


def _normalise(x01: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, device=x01.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x01.device).view(1, -1, 1, 1)
    return (x01 - mean) / std


@torch.no_grad()
def probabilities(model: nn.Module, x01: torch.Tensor, spec: DatasetSpec, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.softmax(model(_normalise(x01[i : i + batch_size], spec)).float(), 1) for i in range(0, len(x01), batch_size)])


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassCalibrationError,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
    )

    return {
        "accuracy": MulticlassAccuracy(num_classes, average="micro")(probs, y).item(),
        "macro_f1": MulticlassF1Score(num_classes, average="macro")(probs, y).item(),
        "per_class_accuracy": MulticlassAccuracy(num_classes, average=None)(probs, y).tolist(),
        "confusion": MulticlassConfusionMatrix(num_classes)(probs, y).tolist(),
        "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")(probs, y).item(),
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rnn_flops(module: nn.RNNBase, batch: int, steps: int) -> int:
    """torch's flop counter does not see the fused LSTM/GRU kernels: count their matmuls here."""
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    dirs = 2 if module.bidirectional else 1
    total, size_in = 0, module.input_size
    for _ in range(module.num_layers):
        total += dirs * gates * 2 * module.hidden_size * (size_in + module.hidden_size)
        size_in = module.hidden_size * dirs
    return total * batch * steps


def gflops_per_image(model: nn.Module, spec: DatasetSpec) -> float:
    """FLOPs of one forward pass at batch 1 (torch.utils.flop_counter counts a multiply-add as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.zeros(1, spec.in_channels, *spec.image_size)
    extra = [0]

    def hook(mod, args, _out):
        seq = args[0]
        batch, steps = (seq.shape[0], seq.shape[1]) if mod.batch_first else (seq.shape[1], seq.shape[0])
        extra[0] += _rnn_flops(mod, batch, steps)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return (counter.get_total_flops() + extra[0]) / 1e9


@torch.no_grad()
def latency_and_throughput(model: nn.Module, spec: DatasetSpec, *, runs: int = 50, batch: int = 64) -> tuple[float, float, float]:
    """CPU latency at batch 1 (p50, p95 in ms) and throughput at batch `batch` (img/s)."""
    model.eval()
    one = torch.rand(1, spec.in_channels, *spec.image_size)
    many = torch.rand(batch, spec.in_channels, *spec.image_size)
    for _ in range(5):
        model(one)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(one)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    model(many)
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        model(many)
    throughput = reps * batch / (time.perf_counter() - t)
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], throughput


def fgsm(model: nn.Module, x01: torch.Tensor, y: torch.Tensor, eps: float, spec: DatasetSpec, batch_size: int = 250) -> torch.Tensor:
    """Fast gradient sign attack in pixel space ([0, 1]), one step of size eps."""
    model.eval()
    out = []
    for i in range(0, len(x01), batch_size):
        xb = x01[i : i + batch_size].clone().requires_grad_(True)
        loss = F.cross_entropy(model(_normalise(xb, spec)), y[i : i + batch_size])
        (grad,) = torch.autograd.grad(loss, xb)
        out.append((xb + eps * grad.sign()).clamp(0, 1).detach())
    return torch.cat(out)


def robustness(
    model: nn.Module, x01: torch.Tensor, y: torch.Tensor, spec: DatasetSpec, *, noise=(0.1, 0.3), eps=(0.05, 0.1), seed: int = 0
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in noise:
        noisy = (x01 + sigma * torch.randn(x01.shape, generator=gen).to(x01.device)).clamp(0, 1)  # CPU draws: the same noise on any device
        out[f"acc_noise_{sigma:g}"] = (probabilities(model, noisy, spec).argmax(1) == y).float().mean().item()
    for e in eps:
        adv = fgsm(model, x01, y, e, spec)
        out[f"acc_fgsm_{e:g}"] = (probabilities(model, adv, spec).argmax(1) == y).float().mean().item()
    return out


def evaluate_classifier(model: nn.Module, spec: DatasetSpec, test: ImageTensors, *, latency_runs: int = 50,
                        noise=(0.1, 0.3), eps=(0.05, 0.1)) -> ClassifierEvaluation:  # fmt: skip
    from components.training.device import select_device

    device = select_device("auto")  # accuracy, noise and FGSM on the training device (a GPU when there is one)
    model = model.to(device).eval()
    x01, y = test.x.to(device).float() / 255, test.y.to(device)
    probs = probabilities(model, x01, spec).cpu()
    m = classification_metrics(probs, test.y, spec.num_classes)
    robust = robustness(model, x01, y, spec, noise=noise, eps=eps)
    model = model.cpu()  # latency and FLOPs: the CPU figures the report documents
    p50, p95, tput = latency_and_throughput(model, spec, runs=latency_runs)
    return ClassifierEvaluation(
        accuracy=m["accuracy"], macro_f1=m["macro_f1"], ece=m["ece"], per_class_accuracy=m["per_class_accuracy"],
        confusion=m["confusion"], params=count_params(model), gflops=gflops_per_image(model, spec),
        latency_ms_p50=p50, latency_ms_p95=p95, throughput_img_s=tput,
        robustness=robust, correct=(probs.argmax(1) == test.y).tolist(),
    )  # fmt: skip
