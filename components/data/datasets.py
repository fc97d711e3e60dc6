"""From `data/` to tensors: the dataset's spec (classes, channels, size, normalisation) and splits.

Splits are decoded once into uint8 tensors in memory (MNIST-5k: 4 MB); batches are cut from them by
index, which is what keeps the training loop as fast as a bare one. The spec is the preprocessing
contract: serving applies the same conversion, resize and normalisation from the logged spec.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.ingest import MANIFEST, read_dataset_info
from components.data.preprocess import SIXTEEN_BIT, DatasetSpec, to_array, to_mode  # noqa: F401 - their home is preprocess (torch-free)


class DiskImages:
    """A split's uint8 pixels decoded from disk on demand, for data larger than the memory budget.
    `x[idx]` decodes those images here; `ImageTensors.batches` decodes whole batches in DataLoader
    worker processes, in the order given, so training sees exactly the batches it would in memory."""

    def __init__(self, files: list[Path], channels: int, size: tuple[int, int], resize: str):
        self.files, self.channels, self.size, self.resize = files, channels, size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self.files)))
        idx = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        out = np.empty((len(idx), self.channels, *self.size), dtype=np.uint8)
        for k, i in enumerate(idx):
            with Image.open(self.files[i]) as img:
                out[k] = to_array(img, self.channels, self.size, self.resize)
        return torch.from_numpy(out)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, x: DiskImages, batches: list[torch.Tensor]):
        self.x, self.batches = x, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.x[self.batches[k]]


@dataclass
class ImageTensors:
    x: torch.Tensor | DiskImages  # uint8, (N, C, H, W); DiskImages: decoded on demand (streaming)
    y: torch.Tensor  # int64, (N,)
    paths: list[str]
    workers: int = 2  # DataLoader worker processes when streaming

    def __len__(self) -> int:
        return len(self.y)

    @property
    def streaming(self) -> bool:
        return isinstance(self.x, DiskImages)

    def batches(self, index_batches: list[torch.Tensor]):
        """The uint8 pixels of each batch of indices, in order: sliced from memory, or decoded from
        disk by `workers` DataLoader processes (prefetching) when streaming."""
        if not self.streaming:
            return (self.x[idx] for idx in index_batches)
        loader = torch.utils.data.DataLoader(_Batches(self.x, index_batches), batch_size=None, shuffle=False,
                                             num_workers=self.workers, prefetch_factor=4 if self.workers else None,
                                             generator=torch.Generator(),  # its own: the global RNG (dropout) stays the in-memory path's
                                             # forkserver, not fork: a fork of a process running Prefect's and MLflow's threads dies
                                             multiprocessing_context="forkserver" if self.workers else None)  # fmt: skip
        return iter(loader)


def _rows(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def preprocess(images: list[Image.Image], spec: DatasetSpec) -> torch.Tensor:
    """Images → the normalised float batch a model logged with `spec` expects (serving, evaluation)."""
    return normalize(to_unit(images, spec), spec)


def to_unit(images: list[Image.Image], spec: DatasetSpec) -> torch.Tensor:
    """Images → the training conversion as a float batch in 0..1, not yet normalised."""
    return torch.from_numpy(np.stack([to_array(img, spec.in_channels, spec.image_size, spec.resize) for img in images])).float().div_(255)


def normalize(x01: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    c = spec.in_channels
    mean = torch.tensor(spec.mean, device=x01.device).view(1, c, 1, 1)
    std = torch.tensor(spec.std, device=x01.device).view(1, c, 1, 1)
    return (x01 - mean) / std


def choose_image_size(sizes: list[tuple[int, int]], image_size, max_side: int) -> tuple[int, int]:
    """`data.image_size`: an explicit side or [H, W]; or `auto`: the data's one size when all images
    share it (scaled down, aspect kept, if its longer side is over `max_side`), else a square of the
    median shorter side, capped at `max_side`."""
    if image_size != "auto":
        return (int(image_size), int(image_size)) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if not sizes:
        raise ValueError("no decodable image sizes in the manifest")
    common = Counter(sizes)
    if len(common) == 1:
        h, w = sizes[0]
        scale = min(1.0, max_side / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))
    side = int(np.median([min(h, w) for h, w in sizes]))
    side = max(8, min(side, max_side))
    return side, side


def load_split(data_dir: Path, split: str, channels: int, size: tuple[int, int], resize: str = "stretch") -> ImageTensors:
    rows = [r for r in _rows(data_dir) if r["split"] == split]
    x = np.empty((len(rows), channels, *size), dtype=np.uint8)
    for i, r in enumerate(rows):
        with Image.open(data_dir / r["path"]) as img:
            x[i] = to_array(img, channels, size, resize)
    y = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    return ImageTensors(torch.from_numpy(x), y, [r["path"] for r in rows])


STATS_SAMPLE = 5000  # normalisation statistics from at most this many training images (the same ones either path)


def stats_sample(data: ImageTensors) -> torch.Tensor:
    """uint8 pixels of the images that set the normalisation: all of them up to STATS_SAMPLE, else an
    evenly spaced, deterministic subset — identical for the in-memory and the streaming path."""
    n = len(data)
    if n <= STATS_SAMPLE:
        return data.x[:]
    return data.x[torch.linspace(0, n - 1, STATS_SAMPLE).long()]


def disk_split(data_dir: Path, split: str, channels: int, size: tuple[int, int], resize: str = "stretch") -> ImageTensors:
    """A split that stays on disk (streaming): paths and labels now, pixels when a batch needs them."""
    rows = [r for r in _rows(data_dir) if r["split"] == split]
    y = torch.tensor([int(r["label"]) for r in rows], dtype=torch.int64)
    return ImageTensors(DiskImages([data_dir / r["path"] for r in rows], channels, size, resize), y, [r["path"] for r in rows])


def load_spec_split(data_dir: Path, split: str, spec: DatasetSpec) -> ImageTensors:
    """A split as a model logged with `spec` sees it (evaluation, drift, GAN metrics)."""
    return load_split(data_dir, split, spec.in_channels, spec.image_size, spec.resize)


def load_dataset(data_dir: Path, data_cfg=None, *, max_side: int | None = None) -> tuple[DatasetSpec, dict[str, ImageTensors]]:
    """Spec + train/val/test tensors, decoded at the training size (`data.image_size`, `data.resize`).
    Channels: the dataset's channel mode (dataset.json, chosen at ingest), every file converted to it."""
    from components.config import DataConfig

    cfg = data_cfg or DataConfig()
    info = read_dataset_info(data_dir)
    rows = _rows(data_dir)
    channels = info.get("channels") or Counter(int(r["channels"]) for r in rows if r["channels"]).most_common(1)[0][0]
    sizes = [(int(r["height"]), int(r["width"])) for r in rows if r["width"]]
    image_size = choose_image_size(sizes, cfg.image_size, max_side or cfg.max_side)
    resize = cfg.resize if len(set(sizes)) > 1 else "stretch"  # one shared size: aspect kept, nothing to crop
    per_image = int(channels) * image_size[0] * image_size[1]
    streaming = len(rows) * per_image > cfg.memory_budget_mb * 2**20  # decoded at the training size
    splits = {s: (disk_split if streaming else load_split)(data_dir, s, channels, image_size, resize) for s in ("train", "val", "test")}
    for split in splits.values():
        split.workers = cfg.loader_workers
    mean, std = normalisation(splits["train"])
    spec = DatasetSpec(list(info["classes"]), int(channels), tuple(image_size), mean, std, resize)
    return spec, splits


def normalisation(train: ImageTensors) -> tuple[list[float], list[float]]:
    """Per-channel mean and std ([0, 1] scale) of the training images that set the normalisation."""
    x = stats_sample(train).float().div_(255)
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return [round(m, 6) for m in mean], [round(s, 6) for s in std]
