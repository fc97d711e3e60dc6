"""Where a classifier's answer came from: Grad-CAM for models with convolutions (cnn, torchvision
archs, cnn_lstm's and feature fusion's conv fronts), gradient saliency for the rest (the rnn).

Grad-CAM (Selvaraju et al. 2017): the last convolution's activations A_k, weighted by the mean
gradient of the class score over each channel, summed, ReLU'd, upsampled to the input. Gradient
saliency: |∂ score / ∂ pixel|, the largest over channels. Both are normalised to [0, 1] per image.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.data.datasets import DatasetSpec, normalize


def last_conv(model: nn.Module) -> nn.Conv2d | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _unit(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    """(N, H, W) maps for the normalised input batch `x` and class indices `targets`."""
    acts: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
    try:
        with torch.enable_grad():
            logits = model(x)
            a = acts["a"]
            (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a)
    finally:
        hook.remove()
    weights = grad.float().mean((2, 3), keepdim=True)
    cam = F.relu((weights * a.detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _unit(cam)


def gradient_saliency(model: nn.Module, x01: torch.Tensor, spec: DatasetSpec, targets: torch.Tensor) -> torch.Tensor:
    x01 = x01.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(normalize(x01, spec))
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x01)
    return _unit(grad.abs().amax(1))


def explain(model: nn.Module, x01: torch.Tensor, spec: DatasetSpec, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """(maps (N, H, W) in [0, 1], method name) for images in 0..1; targets default to the predicted classes."""
    model = model.eval()
    if targets is None:
        with torch.no_grad():
            targets = model(normalize(x01, spec)).argmax(1)
    layer = last_conv(model)
    if layer is not None:
        return grad_cam(model, normalize(x01, spec), targets, layer).cpu(), "Grad-CAM"
    return gradient_saliency(model, x01, spec, targets).cpu(), "saliency"
