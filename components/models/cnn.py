"""CNN family: a compact ResNet-style network (BatchNorm, residual blocks)."""

from __future__ import annotations

import torch
import torch.nn as nn

from components.models import register_model


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ConvFeatures(nn.Module):
    """Stem + residual stages; the first stage keeps full resolution, each later one halves it,
    by a strided first block (ResNet) or a 2×2 max-pool before it (`downsample="pool"`)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 1, downsample: str = "stride"):
        super().__init__()
        if downsample not in ("stride", "pool"):
            raise ValueError(f"cnn: downsample must be 'stride' or 'pool', got {downsample!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            if i > 0 and downsample == "pool":
                stages.append(nn.MaxPool2d(2))
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0 and downsample == "stride") else 1
                stages.append(BasicBlock(c, w, stride=stride))
                c = w
        self.stages = nn.Sequential(*stages)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class ResNetSmall(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(32, 64, 128), blocks: int = 1, dropout: float = 0.3, downsample: str = "stride"):
        super().__init__()
        self.features = ConvFeatures(in_channels, tuple(widths), blocks, downsample)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(self.features.out_channels, num_classes))
        self.embedding_dim = self.features.out_channels

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[:3](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("cnn", family="cnn")
def cnn(
    *, num_classes: int, in_channels: int, image_size: tuple[int, int], widths=(32, 64, 128), blocks: int = 1, dropout: float = 0.3, downsample: str = "stride"
) -> nn.Module:
    return ResNetSmall(num_classes, in_channels, widths, blocks, dropout, downsample)
