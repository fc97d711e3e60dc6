"""A tiny classifier family: one convolution and a linear head.

The docs' "Extending visionflow" example, kept true by tests/test_extending.py: this file plus one
block under `models:` in params.yaml is the whole change.
"""

from __future__ import annotations

import torch.nn as nn

from components.models import register_model


@register_model("tiny", family="tiny", kind="classifier", defaults={"train": {"epochs": 5}})
def tiny(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 8) -> nn.Module:
    """Any data shape: the pooled head does not depend on `image_size`."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
