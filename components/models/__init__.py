"""Model registry (timm's pattern): `@register_model` + `create_model(name, ...)` + `list_models()`.

Every builder takes the dataset's shape — `num_classes`, `in_channels`, `image_size` (H, W) — plus
family hyper-parameters, so nothing assumes 28×28, grayscale or 10 classes.
`torchvision:<arch>` builds any torchvision classifier by name with its stem/head adapted.

A model declares its `kind`, which decides how the pipeline trains, evaluates and registers it:
`classifier` (images → logits), `generator` (a class-conditional GAN) or `fusion` (built from trained
classifiers). A module in this package is loaded on first use, so a new family is one file here plus
one block under `models:` in params.yaml; a module elsewhere is named by the block's `module:` key.
Every model registered from this package is a family of the default config, with `defaults` as its
block (e.g. `{"enabled": False}` for one that is off until a profile turns it on).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch.nn as nn

Kind = Literal["classifier", "generator", "fusion"]
KINDS: tuple[str, ...] = ("classifier", "generator", "fusion")


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about a model: its builder, report family, kind and default config block."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    kind: str
    defaults: dict[str, Any] = field(default_factory=dict)
    builtin: bool = True


_REGISTRY: dict[str, ModelEntry] = {}
FAMILY: dict[str, str] = {}


def register_model(
    name: str, family: str, kind: Kind = "classifier", defaults: dict[str, Any] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under `name`. `family` is the report's family column; `defaults` is the
    model's config block (enabled / hparams / train) that params.yaml's block is deep-merged over."""
    if kind not in KINDS:
        raise ValueError(f"model '{name}': kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        builtin = fn.__module__.startswith(f"{__name__}.")
        _REGISTRY[name] = ModelEntry(name, fn, family, kind, dict(defaults or {}), builtin)
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
    return _REGISTRY[name].builder(num_classes=num_classes, in_channels=in_channels, image_size=size, **hparams)


def list_models(kind: str | None = None, builtin_only: bool = False) -> list[str]:
    """Registered model names, optionally of one kind, or only those from this package."""
    _load_families()
    return sorted(n for n, e in _REGISTRY.items() if (kind is None or e.kind == kind) and (e.builtin or not builtin_only))


def model_entry(name: str) -> ModelEntry | None:
    """The registry entry of `name` (`torchvision:<arch>` is a classifier of the cnn family), or None."""
    _load_families()
    if name.startswith("torchvision:"):
        return ModelEntry(name, lambda **kw: create_model(name, **kw), "cnn", "classifier")
    return _REGISTRY.get(name)


def kind_of(name: str) -> str:
    entry = model_entry(name)
    if entry is None:
        raise ValueError(f"unknown model '{name}' (available: {', '.join(list_models())}, torchvision:<arch>)")
    return entry.kind


def family_of(name: str) -> str:
    _load_families()
    return "cnn" if name.startswith("torchvision:") else FAMILY[name]


def import_family_module(module: str, search: Path | None = None) -> None:
    """Import a family module named by a config block's `module:` (its import registers its models);
    when it is not importable as is, `search` (the params file's folder) joins sys.path, as a
    project's own package would be on a run from its root."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if search is None or exc.name != top or str(search) in sys.path:
            raise
        sys.path.insert(0, str(search))
        importlib.import_module(module)


_loaded = False


def _load_families() -> None:
    """Import every module of this package once: each registers its models; one file per family."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
