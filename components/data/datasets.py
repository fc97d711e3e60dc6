"""From `data/` to tensors: the dataset's spec (classes, channels, size, normalisation) and splits.

Splits are decoded once into uint8 tensors in memory (MNIST-5k: 4 MB); batches are cut from them by
index, which is what keeps the training loop as fast as a bare one. The spec is the preprocessing
contract: serving applies the same conversion, resize and normalisation from the logged spec.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.ingest import MANIFEST, read_dataset_info


@dataclass(frozen=True)
class DatasetSpec:
    classes: list[str]
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: list[float]  # per channel, [0, 1] scale, from the train split
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        d = json.loads(text)
        d["image_size"] = tuple(d["image_size"])
        return cls(**d)


@dataclass
class ImageTensors:
    x: torch.Tensor  # uint8, (N, C, H, W)
    y: torch.Tensor  # int64, (N,)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.y)


def _rows(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def to_array(img: Image.Image, channels: int, size: tuple[int, int]) -> np.ndarray:
    """The training conversion: gray or RGB, resized (bilinear) to (H, W); uint8 (C, H, W)."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_split(data_dir: Path, split: str, channels: int, size: tuple[int, int]) -> ImageTensors:
    rows = [r for r in _rows(data_dir) if r["split"] == split]
    x = np.empty((len(rows), channels, *size), dtype=np.uint8)
    for i, r in enumerate(rows):
        with Image.open(data_dir / r["path"]) as img:
            x[i] = to_array(img, channels, size)
    y = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    return ImageTensors(torch.from_numpy(x), y, [r["path"] for r in rows])


def load_dataset(data_dir: Path, image_size: tuple[int, int] | None = None) -> tuple[DatasetSpec, dict[str, ImageTensors]]:
    """Spec + train/val/test tensors. Size: the most common image size unless given."""
    info = read_dataset_info(data_dir)
    rows = _rows(data_dir)
    channels = Counter(int(r["channels"]) for r in rows if r["channels"]).most_common(1)[0][0]
    if image_size is None:
        (w, h), _ = Counter((int(r["width"]), int(r["height"])) for r in rows if r["width"]).most_common(1)[0]
        image_size = (h, w)
    splits = {s: load_split(data_dir, s, channels, image_size) for s in ("train", "val", "test")}
    train = splits["train"].x.float().div_(255)
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    spec = DatasetSpec(list(info["classes"]), channels, tuple(image_size), [round(m, 6) for m in mean], [round(s, 6) for s in std])
    return spec, splits
