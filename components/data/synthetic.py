"""A generated photo-like image set, for tests and benchmarks (nothing to download): shapes of random
colour, size, position and rotation on textured backgrounds, saved as JPEGs of varying size, with
the oddities of a real photo folder — some grayscale files, some stored on their side with an EXIF
orientation tag, mixed-case extensions — and no split folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Texture: a colour gradient, blotches of noise and random lines."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    base = c0 * (1 - t) + c1 * t
    arr = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    noise = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    noise = np.asarray(Image.fromarray(((noise - noise.min()) / (np.ptp(noise) + 1e-6) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    arr = np.clip(arr * 0.7 + noise * 0.3 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        xy = [int(v) for v in (rng.integers(0, w), rng.integers(0, h), rng.integers(0, w), rng.integers(0, h))]
        draw.line(xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return img


def _polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        rad = (inner if inner and i % 2 else 1.0) * r
        a = angle + 2 * math.pi * i / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(img: Image.Image, shape: str, rng: np.random.Generator) -> None:
    w, h = img.size
    r = min(w, h) * rng.uniform(0.22, 0.38)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    angle = rng.uniform(0, 2 * math.pi)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    outline = tuple(255 - v for v in color)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color, outline=outline, width=2)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=max(3, int(r * 0.3)))
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r, 4, angle), fill=color, outline=outline)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, angle), fill=color, outline=outline)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r, 5, angle, inner=0.45), fill=color, outline=outline)
    elif shape == "cross":
        t = r * 0.32
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * t, dx * t
            d.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                       (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)], fill=color)  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}")


def photo(shape: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    img = _background(rng, *size)
    draw_shape(img, shape, rng)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_photo_folder(root: Path, per_class: int = 300, classes: tuple[str, ...] = SHAPES[:5], *, seed: int = 0,
                      min_side: int = 100, max_side: int = 160, gray_every: int = 20, rotated_every: int = 25) -> Path:  # fmt: skip
    """`root/<class>/<name>.jpg`: every `gray_every`-th file grayscale, every `rotated_every`-th stored
    on its side with EXIF orientation 6 (upright when the tag is applied), some upper-case extensions."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1)))
            img = photo(c, rng, size)
            name = root / c / f"{c}_{i:04d}.{'JPG' if i % 7 == 3 else 'jpg'}"
            if gray_every and i % gray_every == gray_every - 1:
                img = img.convert("L")
            if rotated_every and i % rotated_every == rotated_every - 2:
                exif = Image.Exif()
                exif[0x0112] = 6  # display rotated 90° clockwise
                img.transpose(Image.Transpose.ROTATE_90).save(name, quality=90, exif=exif)
            else:
                img.save(name, quality=90)
    return root
