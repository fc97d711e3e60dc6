"""Model registry (timm's pattern): `@register_model` + `create_model(name, ...)` + `list_models()`.

Every builder takes the dataset's shape — `num_classes`, `in_channels`, `image_size` (H, W) — plus
family hyper-parameters, so nothing assumes 28×28, grayscale or 10 classes.
`torchvision:<arch>` builds any torchvision classifier by name with its stem/head adapted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
FAMILY: dict[str, str] = {}


def register_model(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = fn
        FAMILY[name] = family
        return fn

    return wrap


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int | tuple[int, int], **hparams: Any) -> nn.Module:
    _load_families()
    size = _size(image_size)
    if name.startswith("torchvision:"):
        from components.models.transfer import torchvision_classifier

        return torchvision_classifier(name.split(":", 1)[1], num_classes=num_classes, in_channels=in_channels, image_size=size, **hparams)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}' (available: {', '.join(list_models())}, torchvision:<arch>)")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=size, **hparams)


def list_models() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def family_of(name: str) -> str:
    _load_families()
    return "cnn" if name.startswith("torchvision:") else FAMILY[name]


def _load_families() -> None:
    # Importing a family module registers its models; one file per family.
    from components.models import cnn, gan, hybrid, rnn, transfer  # noqa: F401
