"""Your own photos: a messy folder ingested as a user expects, the one preprocessing function, the
image-size policy, photo augmentation, and `ingest X` → `run` → serve on RGB photos (real DVC, GX,
Prefect, MLflow, BentoML)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from components.config import TrainConfig, ValidationConfig
from components.data import versioning
from components.data.datasets import choose_image_size, load_spec_split, preprocess, to_array
from components.data.ingest import ingest
from components.data.synthetic import make_photo_folder
from components.data.validation import validate
from components.tracking import mlflow_store as store
from components.training.classifier import photo_augment
from components.workspace import Workspace
from tests.conftest import free_port, wait_http_ok

RNG = np.random.default_rng(0)


def _rgb(h=40, w=50) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _messy(root: Path) -> Path:
    for c in ("cat", "dog"):
        d = root / c
        d.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(_rgb()).save(d / f"p{i}.jpg")
        Image.fromarray(_rgb()[..., 0], "L").save(d / "gray.JPG")
        Image.fromarray(np.dstack([_rgb(), np.full((40, 50), 128, np.uint8)]), "RGBA").save(d / "alpha.png")
        Image.fromarray(_rgb()).convert("P").save(d / "palette.gif")
        Image.fromarray(_rgb()).save(d / "web.WebP")
        Image.fromarray(_rgb()).convert("CMYK").save(d / "print.tiff")
        Image.fromarray(RNG.integers(0, 65535, (40, 50)).astype(np.uint16)).save(d / "deep.png")
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(_rgb(30, 60)).save(d / "side.jpg", exif=exif)
        for litter in (".DS_Store", "Thumbs.db", "._p1.jpg"):
            (d / litter).write_bytes(b"litter")
        (d / ".hidden").mkdir()
        Image.fromarray(_rgb()).save(d / ".hidden" / "x.png")
        (d / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("about these photos")
    return root


def test_a_messy_photo_folder_is_ingested_as_a_user_expects(tmp_path):
    src = _messy(tmp_path / "src")
    res = ingest(src, tmp_path / "out")
    assert res.n_images == 2 * 15 and res.channels == 3
    assert res.converted == {"CMYK→RGB": 2, "I;16→RGB": 2, "L→RGB": 2, "P→RGB": 2, "RGBA→RGB": 2, "exif-rotated": 2}
    assert res.skipped == ["README.md", "cat/notes.txt", "dog/notes.txt"]  # named, never silently dropped; litter ignored
    assert "skipped 3 file(s)" in res.summary() and "README.md" in res.summary()
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["channels"] == 3 and info["skipped"] == res.skipped and info["converted"] == res.converted
    rows = {r.split(",")[0].split("/", 1)[1]: r.split(",") for r in (tmp_path / "out" / "manifest.csv").read_text().splitlines()[1:]}
    side = next(v for k, v in rows.items() if k.endswith("cat/side.jpg"))
    assert (side[5], side[6]) == ("30", "60") and side[-1] == "exif-rotated"  # upright size in the manifest
    lenient = ValidationConfig(min_images_per_class_per_split=1, split_tolerance=0.1)
    report = validate(tmp_path / "out", lenient)
    assert report.success, report.summary()

    # a corrupt file among them still fails validation, named
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    ingest(src, tmp_path / "out2")
    report = validate(tmp_path / "out2", lenient)
    assert not report.success and any("dog/broken.jpg" in f.line() for f in report.failures)


def test_the_one_preprocessing_function():
    upright = Image.fromarray(_rgb(30, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="PNG", exif=exif)
    stored = Image.open(io.BytesIO(buf.getvalue()))
    assert np.array_equal(to_array(stored, 3, (30, 60)), to_array(upright, 3, (30, 60)))  # EXIF applied
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert to_array(deep, 1, (8, 8)).min() == 255  # 16-bit scaled, not clipped to white by accident of range
    assert to_array(Image.fromarray(np.full((8, 8), 256 * 100, np.uint16)), 1, (8, 8)).max() == 100
    clear = Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA")
    assert to_array(clear, 3, (8, 8)).min() == 255  # transparency on white
    wide = Image.fromarray(_rgb(20, 40))
    assert to_array(wide, 3, (10, 10), "crop").shape == (3, 10, 10)
    padded = to_array(wide, 3, (10, 10), "pad")
    assert padded.shape == (3, 10, 10) and padded[:, 0].max() == 0 and padded[:, -1].max() == 0  # bars above and below


def test_image_size_policy():
    assert choose_image_size([(28, 28)] * 5, "auto", 64) == (28, 28)  # MNIST: unchanged
    assert choose_image_size([(200, 300)] * 3, "auto", 64) == (43, 64)  # one size: aspect kept under the cap
    assert choose_image_size([(100, 160), (120, 130), (150, 110)], "auto", 64) == (64, 64)
    assert choose_image_size([(30, 50), (40, 45), (35, 60)], "auto", 64) == (35, 35)  # median shorter side
    assert choose_image_size([(30, 50)], 48, 64) == (48, 48) and choose_image_size([(30, 50)], (20, 30), 64) == (20, 30)


def test_photo_augmentation_is_seeded_flips_and_stays_in_range():
    x = torch.rand(16, 3, 24, 24)
    cfg = TrainConfig(augment="photo")
    a = photo_augment(x, cfg, torch.Generator().manual_seed(1))
    b = photo_augment(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, photo_augment(x, cfg, torch.Generator().manual_seed(2)))
    # with no crop, jitter or flip it is the identity; flips alone mirror some images exactly
    plain = TrainConfig(augment="photo", crop_scale=1.0, flip=False, color_jitter=0.0)
    assert torch.allclose(photo_augment(x, plain, torch.Generator().manual_seed(0)), x, atol=1e-5)
    flips = photo_augment(x, TrainConfig(augment="photo", crop_scale=1.0, color_jitter=0.0), torch.Generator().manual_seed(0))
    mirrored = [torch.allclose(flips[i], x[i].flip(-1), atol=1e-5) for i in range(16)]
    assert 0 < sum(mirrored) < 16


PHOTO_PARAMS = """
data: {split: {train: 0.6, val: 0.2, test: 0.2, seed: 0}, max_side: 32}
validation: {min_images_per_class_per_split: 1, split_tolerance: 0.1}
engine: {progress: false}
models:
  cnn: {model: cnn, hparams: {widths: [8, 16]}, train: {epochs: 2, batch_size: 32}}
  rnn: {model: rnn, hparams: {hidden: 16}, train: {epochs: 1, batch_size: 32}}
  cnn_lstm: {model: cnn_lstm, hparams: {widths: [8, 16], hidden: 16}, train: {epochs: 1, batch_size: 32}}
  gan: {hparams: {ngf: 8, ndf: 8, z_dim: 16}, train: {epochs: 1}}
evaluation: {latency_runs: 5, saliency_per_class: 1, gan_test_samples: 50, gan_train_samples: 100, gan_train_epochs: 1}
"""


@pytest.mark.slow
def test_ingest_photos_then_run_trains_on_them_serves_them_and_earlier_versions_come_back(project, tmp_path, tracking_env):
    from flows.data_flow import data_flow
    from flows.training_pipeline import training_pipeline

    (project / "params.yaml").write_text(PHOTO_PARAMS)
    shapes = make_photo_folder(tmp_path / "shapes", per_class=24, classes=("circle", "square", "triangle"), min_side=50, max_side=80, rotated_every=4)
    digits_like = make_photo_folder(tmp_path / "other", per_class=12, classes=("cross", "ring"), min_side=40, max_side=60)
    first = data_flow(root=str(project), source=str(shapes))
    second = data_flow(root=str(project), source=str(digits_like))
    assert first.data_version != second.data_version

    # `run` trains on what is checked out (the second folder), every family on RGB at the chosen size
    res = training_pipeline(root=str(project))
    assert res.data_version == second.data_version and {r["model"] for r in res.rows} >= {"cnn", "rnn", "cnn_lstm", "decision_fusion", "gan"}
    ws = Workspace.at(project)
    store.configure(ws)
    model, spec = store.load_logged_model(f"models:/{store.CLASSIFIER_MODEL}@{store.CHAMPION}")
    assert spec.classes == ["cross", "ring"] and spec.in_channels == 3 and spec.image_size == (32, 32) and spec.resize == "crop"

    # an earlier version by md5: checked out, trained on; the class set changed, promoted by policy, reason recorded
    res = training_pipeline(root=str(project), data_version=first.data_version)
    assert versioning.read_version(ws) == first.data_version and versioning.status(ws).workspace_matches
    model, spec = store.load_logged_model(f"models:/{store.CLASSIFIER_MODEL}@{store.CHAMPION}")
    assert spec.classes == ["circle", "square", "triangle"] and "class set changed" in res.decision
    # with `hold`, another class set leaves the champion and makes the new model the challenger
    held = training_pipeline(root=str(project), data_version=second.data_version, overrides=["selection.on_class_change=hold"])
    assert held.champion == res.champion and "champion held" in held.decision
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHALLENGER) is not None
    versioning.checkout(ws, first.data_version)

    # served == offline on RGB, non-square, EXIF-rotated photos of the test split
    test = load_spec_split(ws.data_dir(), "test", spec)
    offline = torch.softmax(model(preprocess([Image.open(ws.data_dir() / p) for p in test.paths], spec)), 1)
    offline_again = torch.softmax(model(((test.x.float() / 255) - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)), 1)
    assert torch.allclose(offline, offline_again, atol=1e-6)  # evaluation's path and serving's function agree
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.default_uri(ws), "VISIONFLOW_POLL_SECONDS": "60"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:Visionflow", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_http_ok(f"http://127.0.0.1:{port}/readyz"), "bentoml serve did not become ready"
        rotated = 0
        for i, path in enumerate(test.paths):
            raw = (ws.data_dir() / path).read_bytes()
            rotated += Image.open(io.BytesIO(raw)).getexif().get(0x0112, 1) != 1
            r = httpx.post(f"http://127.0.0.1:{port}/classify", files={"image": (Path(path).name, raw)}, timeout=30)
            assert r.status_code == 200, r.text
            served = r.json()["probabilities"]
            assert r.json()["class_name"] == spec.classes[int(offline[i].argmax())]
            assert all(abs(served[c] - float(offline[i, k])) < 1e-4 for k, c in enumerate(spec.classes)), (path, served, offline[i])
        assert rotated >= 1, "no EXIF-rotated photo in the test split"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_streaming_from_disk_gives_the_in_memory_first_epoch(tmp_path):
    """Above the memory budget images are decoded from disk by DataLoader workers; the batches, and so
    the first epoch's loss for the same seed, are those of the in-memory path (no augmentation)."""
    from components.config import DataConfig, EngineConfig
    from components.data.datasets import load_dataset
    from components.models import create_model
    from components.training.classifier import fit

    src = make_photo_folder(tmp_path / "src", per_class=20, classes=("circle", "square"), min_side=40, max_side=60)
    ingest(src, tmp_path / "data")
    histories = []
    for budget in (2048, 0):
        spec, splits = load_dataset(tmp_path / "data", DataConfig(max_side=24, memory_budget_mb=budget, loader_workers=2))
        assert splits["train"].streaming == (budget == 0)
        torch.manual_seed(0)
        model = create_model("cnn", num_classes=2, in_channels=3, image_size=spec.image_size, widths=[4, 8])
        cfg = TrainConfig(epochs=1, batch_size=8, augment="none", seed=0)
        res = fit(model, splits["train"], splits["val"], spec, cfg, EngineConfig(progress=False), workdir=tmp_path / f"w{budget}")
        histories.append(res.history[0])
    assert histories[0]["train_loss"] == histories[1]["train_loss"] and histories[0]["val_loss"] == histories[1]["val_loss"]
