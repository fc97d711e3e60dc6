"""Any torchvision classifier by name (`torchvision:<arch>`), adapted to the data, optionally
initialised from a local weights file (transfer learning). Weights are never downloaded.

Adaptation: the first conv takes the dataset's channels (pretrained RGB kernels averaged for gray);
the last Linear becomes a `num_classes` head; inputs are resized to what the arch needs (ViT: a
multiple of its patch size; every arch: at least `min_side` pixels, since stride-32 nets collapse
28×28 inputs to nothing).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from `.safetensors` or a torch file, loaded with `weights_only=True` (no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; give a local .safetensors or .pt state_dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _parent_and_name(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent = model
    *path, last = dotted.split(".")
    for part in path:
        parent = getattr(parent, part) if not part.isdigit() else parent[int(part)]
    return parent, last


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, last = _parent_and_name(model, dotted)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


IMAGENET_MEAN = [0.485, 0.456, 0.406]  # what torchvision's pretrained classifiers expect
IMAGENET_STD = [0.229, 0.224, 0.225]


def expected_input(model_name: str, hparams: dict, spec):
    """The spec a model should be fed: pretrained torchvision weights expect ImageNet's normalisation
    (averaged for gray data), so the logged spec — and with it serving — uses theirs, not the data's."""
    from dataclasses import replace

    if not model_name.startswith("torchvision:") or not (hparams.get("weights_path") or hparams.get("weights")):
        return spec
    if spec.in_channels == 3:
        return replace(spec, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return replace(spec, mean=[sum(IMAGENET_MEAN) / 3] * spec.in_channels, std=[sum(IMAGENET_STD) / 3] * spec.in_channels)


class ResizeInput(nn.Module):
    """Resizes inputs to a fixed size (when the data's size differs) before the wrapped net. With a
    frozen backbone its BatchNorm layers stay in eval mode (their running statistics are the
    pretrained ones), also while the head trains."""

    def __init__(self, net: nn.Module, size: tuple[int, int] | None, frozen: bool = False):
        super().__init__()
        self.net = net
        self.size = size
        self.frozen = frozen

    def train(self, mode: bool = True) -> "ResizeInput":
        super().train(mode)
        if self.frozen:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.net(x)


def torchvision_classifier(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    weights_path: str | None = None,
    weights: str | None = None,
    freeze_backbone: bool = False,
    min_side: int = 32,
) -> nn.Module:
    """`weights_path`: a local state_dict (safetensors or torch); `weights`: a torchvision weights
    enum name ("DEFAULT", "IMAGENET1K_V1") — torchvision downloads it into TORCH_HOME (the workspace)
    once, so it needs the network where `weights_path` does not."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classifier '{arch}' (see torchvision.models.list_models())")
    h, w = max(image_size[0], min_side), max(image_size[1], min_side)
    kwargs: dict = {}
    if arch.startswith("vit_"):
        patch = int(arch.split("_")[-1]) if arch.split("_")[-1].isdigit() else 16
        side = math.ceil(max(h, w) / patch) * patch
        h = w = side
        kwargs["image_size"] = side
    if weights and weights_path:
        raise ValueError("give weights (a torchvision enum name) or weights_path (a local file), not both")
    enum = torchvision.models.get_model_weights(arch)[weights] if weights and weights != "DEFAULT" else (
        torchvision.models.get_model_weights(arch).DEFAULT if weights else None)  # fmt: skip
    try:
        net = torchvision.models.get_model(arch, weights=enum, **kwargs)
    except OSError as exc:  # URLError is an OSError: offline
        raise RuntimeError(f"torchvision:{arch} weights {weights} could not be downloaded ({exc}); put a local file in hparams.weights_path") from None
    if weights_path:
        state = load_state_dict(weights_path)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or len(missing) > 2:  # allow only a missing head (weight + bias)
            raise ValueError(f"{weights_path} does not fit torchvision:{arch} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if freeze_backbone:
        for p in net.parameters():
            p.requires_grad_(False)

    first_conv = next(n for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    old = net.get_submodule(first_conv)
    if old.in_channels != in_channels:
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
        with torch.no_grad():  # keep pretrained kernels: average RGB, then spread over the new channels
            new.weight.copy_(old.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _replace(net, first_conv, new)
    last_linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    old_head = net.get_submodule(last_linear)
    _replace(net, last_linear, nn.Linear(old_head.in_features, num_classes))
    needs_resize = (h, w) != tuple(image_size)
    return ResizeInput(net, (h, w) if needs_resize else None, frozen=freeze_backbone)
