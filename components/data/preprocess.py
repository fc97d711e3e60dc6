"""The preprocessing contract without torch: the dataset spec, the one image conversion, softmax.

Training, evaluation, the torch service and the ONNX service (an image without torch) all use these
functions, so a photo is converted the same way everywhere. Only numpy, PIL and the standard library
may be imported here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class DatasetSpec:
    classes: list[str]
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: list[float]  # per channel, [0, 1] scale, from the train split (or what pretrained weights expect)
    std: list[float]
    resize: str = "stretch"  # how an image of another size reaches image_size: stretch | crop | pad

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


SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any decoded image → upright, 8-bit gray (channels 1) or RGB (3): EXIF orientation applied,
    16-bit scaled (not clipped), transparency composited on white, palette/CMYK converted."""
    img = ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img
    if img.mode in SIXTEEN_BIT or img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode != "F" and arr.max() > 255 else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def to_array(img: Image.Image, channels: int, size: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """The one preprocessing conversion (training, evaluation, serving, the Bento): upright 8-bit gray
    or RGB (to_mode), brought to (H, W) by `resize` — crop: shorter side to size + centre crop;
    pad: longer side to size + centre pad (black); stretch: both sides (bilinear). uint8 (C, H, W)."""
    img = to_mode(img, channels)
    h, w = size
    if img.size != (w, h):
        if resize == "crop":
            img = ImageOps.fit(img, (w, h), method=Image.Resampling.BILINEAR)
        elif resize == "pad":
            img = ImageOps.pad(img, (w, h), method=Image.Resampling.BILINEAR, color=0)
        else:
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def unit_batch(images: list[Image.Image], spec: DatasetSpec) -> np.ndarray:
    """Images → float32 (N, C, H, W) in 0..1: the numbers `datasets.to_unit` gives, without torch."""
    arr = np.stack([to_array(img, spec.in_channels, spec.image_size, spec.resize) for img in images])
    return arr.astype(np.float32) / np.float32(255)


def normalize_batch(x01: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """(x - mean) / std per channel in float32: the numbers `datasets.normalize` gives, without torch."""
    c = spec.in_channels
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, c, 1, 1)
    return (x01.astype(np.float32, copy=False) - mean) / std


def preprocess_batch(images: list[Image.Image], spec: DatasetSpec) -> np.ndarray:
    """Images → the normalised float32 batch a model logged with `spec` expects (the ONNX input)."""
    return normalize_batch(unit_batch(images, spec), spec)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row maximum (no overflow): the probabilities the
    torch service computes with `torch.softmax(logits.float(), 1)`."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
