"""Images a person looks at: confusion matrix, Grad-CAM / saliency overlays, GAN sample grid, GAN loss curves.

matplotlib with the non-interactive Agg backend; every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from components.data.datasets import DatasetSpec, ImageTensors


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n), dpi=110)
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    peak = max(max(r) for r in confusion) or 1
    for i in range(n):
        for j in range(n):
            if confusion[i][j]:
                ax.text(j, i, confusion[i][j], ha="center", va="center", fontsize=7, color="white" if confusion[i][j] > peak / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def explanation_png(model: nn.Module, spec: DatasetSpec, test: ImageTensors, out_dir: Path, per_class: int = 3) -> Path:
    """Per-class overlays of where the answer came from (components/evaluation/explain.py): Grad-CAM
    for models with convolutions (`gradcam.png`), gradient saliency otherwise (`saliency.png`)."""
    from components.evaluation.explain import explain
    from components.training.device import select_device

    plt = _plt()
    device = select_device("auto")  # gradients on the training device, pictures on the CPU
    model = model.to(device).eval()
    picks = []
    for c in range(spec.num_classes):
        picks += (test.y == c).nonzero().flatten()[:per_class].tolist()
    x01 = (test.x[picks].float() / 255).to(device)
    maps, method = explain(model, x01, spec, test.y[picks].to(device))
    x01 = x01.cpu()
    cols = per_class * 2
    fig, axes = plt.subplots(spec.num_classes, cols, figsize=(cols * 0.9, spec.num_classes * 0.9), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(picks):
        r, cpos = int(test.y[i]), (k % per_class) * 2
        img = x01[k].permute(1, 2, 0).squeeze(-1).numpy()
        cmap = "gray" if spec.in_channels == 1 else None
        axes[r][cpos].imshow(img, cmap=cmap)
        axes[r][cpos + 1].imshow(img, cmap=cmap)
        axes[r][cpos + 1].imshow(maps[k].numpy(), cmap="jet", alpha=0.5)
        if cpos == 0:
            axes[r][0].set_title(spec.classes[r], fontsize=7, loc="left")
    fig.suptitle(f"{method} for the true class", fontsize=8)
    fig.tight_layout(pad=0.2)
    path = out_dir / ("gradcam.png" if method == "Grad-CAM" else "saliency.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def gan_grid_png(images01: torch.Tensor, n_per_class: int, path: Path) -> Path:
    """One row per class (images ordered class by class)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images01, path, nrow=n_per_class, padding=2, pad_value=1.0)
    return path


def loss_curves_png(history: list[dict[str, float]], keys: list[str], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    for k in keys:
        ax.plot([h["epoch"] + 1 for h in history], [h[k] for h in history], label=k)
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
