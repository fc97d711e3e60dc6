"""The training engine on tiny data: epochs, checkpoints, callback, determinism, resume after a kill."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.config import EngineConfig, GanTrainConfig, TrainConfig
from components.data.datasets import DatasetSpec, ImageTensors, load_dataset
from components.data.ingest import ingest
from components.models import create_model
from components.training.classifier import augment, fit
from components.training.device import select_device, use_bf16
from components.training.gan import fit_gan
from tests.conftest import make_folder

QUIET = EngineConfig(progress=False)


def tiny_data(n_per_class: int = 16, classes: int = 3, size=(12, 14), channels: int = 3):
    """Learnable toy images: class k is bright in horizontal band k."""
    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(classes).repeat(n)
        x = torch.randint(0, 60, (len(y), channels, *size), generator=g, dtype=torch.uint8)
        band = size[0] // classes
        for i, k in enumerate(y.tolist()):
            x[i, :, k * band : (k + 1) * band] += 150
        return ImageTensors(x, y, [])

    spec = DatasetSpec([f"c{k}" for k in range(classes)], channels, size, [0.3] * channels, [0.3] * channels)
    return spec, make(n_per_class), make(4)


def _cnn(spec, seed: int = 0):
    torch.manual_seed(seed)  # model init is seeded by the caller (fit seeds the training itself)
    return create_model("cnn", num_classes=spec.num_classes, in_channels=spec.in_channels, image_size=spec.image_size, widths=[8, 16])


def test_fit_trains_checkpoints_and_calls_back(tmp_path):
    spec, train, val = tiny_data()
    seen = []
    res = fit(_cnn(spec), train, val, spec, TrainConfig(epochs=8, batch_size=16, lr=1e-2, patience=100, augment="none"), QUIET,
              workdir=tmp_path, on_epoch_end=lambda e, m: seen.append((e, m["val_acc"])))  # fmt: skip
    assert [e for e, _ in seen] == list(range(8)) and res.epochs_run == 8
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert res.best_val_acc == max(a for _, a in seen) and res.best_val_acc > 0.8
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.img_per_s > 0 and {"train_loss", "val_acc", "img_per_s", "lr"} <= set(res.history[0])


def test_early_stopping_on_validation(tmp_path):
    spec, train, val = tiny_data()
    res = fit(_cnn(spec), train, val, spec, TrainConfig(epochs=30, batch_size=16, lr=1e-2, patience=2), QUIET, workdir=tmp_path)
    assert res.stopped_early and res.epochs_run < 30 and res.epochs_run - 1 - res.best_epoch == 2


def test_same_seed_same_first_epoch_loss(tmp_path):
    spec, train, val = tiny_data()
    runs = [fit(_cnn(spec, s), train, val, spec, TrainConfig(epochs=1, batch_size=16, seed=s), QUIET, workdir=tmp_path / f"r{i}")
            for i, s in enumerate([5, 5, 6])]  # fmt: skip
    losses = [r.history[0]["train_loss"] for r in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]


@pytest.mark.integration  # a subprocess
def test_resume_after_a_killed_run_matches_an_uninterrupted_one(tmp_path):
    worker = [sys.executable, str(Path(__file__).with_name("train_worker.py"))]
    proc = subprocess.Popen([*worker, str(tmp_path / "killed"), "5", "0", "1.5"], stdout=subprocess.PIPE, text=True)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 1:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    stopped_at = torch.load(last, weights_only=False)["epoch"]
    assert stopped_at < 4, "the run finished before it could be killed"
    out = subprocess.run([*worker, str(tmp_path / "killed"), "5", "1", "0"], capture_output=True, text=True, check=True)
    assert "EPOCHS 5" in out.stdout
    subprocess.run([*worker, str(tmp_path / "clean"), "5", "0", "0"], capture_output=True, text=True, check=True)
    resumed = torch.load(last, weights_only=False)
    clean = torch.load(tmp_path / "clean" / "last.pt", weights_only=False)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3, 4]
    for k, v in clean["model"].items():
        assert torch.equal(v, resumed["model"][k]), f"{k} differs after resume"


def test_augment_moves_pixels_but_keeps_shape():
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1
    for mode in ("shift", "affine"):
        out = augment(x, TrainConfig(augment=mode, shift_px=3), torch.Generator().manual_seed(0))
        assert out.shape == x.shape and not torch.allclose(out, x)


def test_shifts_move_whole_pixels_without_blur():
    x = torch.rand(32, 1, 12, 12)
    out = augment(x, TrainConfig(augment="shift", shift_px=2), torch.Generator().manual_seed(0))
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))  # zeros come in at the border
    for i in range(len(x)):  # every image is its original moved by whole pixels: no interpolated values
        shifted = [pad[i, :, 2 - dy : 14 - dy, 2 - dx : 14 - dx] for dy in range(-2, 3) for dx in range(-2, 3)]
        assert any(torch.allclose(out[i], s, atol=1e-5) for s in shifted), f"image {i} is not a whole-pixel shift"
    assert sum(not torch.allclose(out[i], x[i]) for i in range(len(x))) > 16  # and most of them moved


def test_elastic_distortion_is_local_smooth_and_scales_with_alpha():
    from components.training.classifier import elastic_field

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    weak, strong = elastic_field(64, 28, 28, 8, 4, gen()), elastic_field(64, 28, 28, 32, 4, gen())
    assert weak.shape == (64, 28, 28, 2) and torch.allclose(strong, 4 * weak, atol=1e-6)  # alpha scales one field
    px = strong * 14  # grid units → pixels on a 28-px side
    assert 0.5 < px.std() < 3 and px.mean().abs() < 0.2  # a pixel or two either way, no drift
    rough = elastic_field(64, 28, 28, 32, 0.5, gen()) * 14
    step = lambda f: (f[:, 1:] - f[:, :-1]).abs().mean() / f.std()  # noqa: E731 — neighbour difference, relative
    assert step(px) < 0.5 * step(rough)  # sigma smooths: neighbours move together (a distortion, not noise)
    x = torch.zeros(4, 1, 16, 16)
    x[:, :, 4:12, 7:9] = 1
    plain = TrainConfig(augment="affine", rotate_deg=0, scale=0, shift_px=0)
    assert torch.allclose(augment(x, plain, gen()), x, atol=1e-6)  # no affine, no elastic: identity
    bent = augment(x, plain.model_copy(update={"elastic_alpha": 3.0}), gen())
    assert not torch.allclose(bent, x) and torch.allclose(bent.sum(), x.sum(), rtol=0.2)  # the stroke moves, its ink stays


def test_precision_and_device_selection():
    cpu = torch.device("cpu")
    assert select_device("cpu") == cpu
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("cpu", "mps")
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")


def test_gan_loop_trains_and_resumes(tmp_path):
    spec, train, _ = tiny_data(size=(12, 12), channels=1)
    gan = create_model("gan", num_classes=3, in_channels=1, image_size=(12, 12), z_dim=8, ngf=8, ndf=8)
    res = fit_gan(gan, train, GanTrainConfig(epochs=2, batch_size=16), QUIET, workdir=tmp_path)
    assert res.epochs_run == 2 and {"d_loss", "g_loss", "d_real", "d_fake"} <= set(res.history[0])
    more = fit_gan(gan, train, GanTrainConfig(epochs=3, batch_size=16), QUIET, workdir=tmp_path, resume=True)
    assert [h["epoch"] for h in more.history] == [0, 1, 2]
    assert gan.sample(torch.tensor([0, 1, 2])).shape == (3, 1, 12, 12)


def test_gan_learning_rate_constant_for_half_the_epochs_then_falling_towards_zero(tmp_path):
    spec, train, _ = tiny_data(size=(12, 12), channels=1)
    gan = create_model("gan", num_classes=3, in_channels=1, image_size=(12, 12), z_dim=8, ngf=8, ndf=8)
    cfg = GanTrainConfig(epochs=4, batch_size=16, lr=3e-4, schedule="linear_decay")
    res = fit_gan(gan, train, cfg, QUIET, workdir=tmp_path)
    assert [round(h["lr"] / 3e-4, 4) for h in res.history] == [1.0, 1.0, round(2 / 3, 4), round(1 / 3, 4)]
    const = fit_gan(gan, train, cfg.model_copy(update={"epochs": 2, "schedule": "constant"}), QUIET, workdir=tmp_path / "c")
    assert [h["lr"] for h in const.history] == [3e-4, 3e-4]


def test_load_dataset_from_an_ingested_folder(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a", "b", "c"), per_class=10, size=(45, 61))
    ingest(src, tmp_path / "data")
    spec, splits = load_dataset(tmp_path / "data", max_side=64)  # under the cap: the data's one size
    assert spec.classes == ["a", "b", "c"] and spec.in_channels == 3 and spec.image_size == (61, 45)
    assert sum(len(s) for s in splits.values()) == 30
    assert splits["train"].x.dtype == torch.uint8 and splits["train"].x.shape[1:] == (3, 61, 45)
    assert all(0 < m < 1 for m in spec.mean) and DatasetSpec.from_json(spec.to_json()) == spec


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
def test_cuda_path_bf16_channels_last(tmp_path):
    spec, train, val = tiny_data()
    res = fit(_cnn(spec), train, val, spec, TrainConfig(epochs=2, batch_size=16), EngineConfig(device="cuda", progress=False), workdir=tmp_path)
    assert res.device.startswith("cuda") and res.bf16 == torch.cuda.is_bf16_supported() and res.epochs_run == 2


@pytest.mark.integration  # a subprocess
def test_odd_batches_in_channels_last_do_not_crash_the_process(tmp_path):
    """torch 2.14.1's CPU backward of a 1×1 stride-2 conv in channels_last segfaults on odd batch
    sizes; the engine keeps training batches even there. In a subprocess: a crash must not take pytest."""
    import subprocess
    import sys

    code = (
        "import torch; from pathlib import Path\n"
        "from components.models import create_model\n"
        "from components.data.datasets import DatasetSpec, ImageTensors\n"
        "from components.training.classifier import fit\n"
        "from components.config import TrainConfig, EngineConfig\n"
        "spec = DatasetSpec(['a', 'b', 'c'], 3, (32, 32), [0.5] * 3, [0.25] * 3)\n"
        "x = ImageTensors(torch.randint(0, 255, (99, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 3, (99,)), [])\n"
        "m = create_model('cnn', num_classes=3, in_channels=3, image_size=(32, 32), widths=[8, 16], downsample='stride')\n"
        f"r = fit(m, x, x, spec, TrainConfig(epochs=1, batch_size=128), EngineConfig(progress=False, device='cpu'), workdir=Path({str(tmp_path)!r}))\n"
        "print('trained', r.history[0]['train_images'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trained 98" in r.stdout


def test_progress_without_a_terminal_is_one_line_per_epoch():
    """CI, a container, nohup: a logfmt line per epoch with loss, accuracy, speed, elapsed and ETA (the rich bar needs a terminal)."""
    import io

    from components.training.classifier import _progress

    out = io.StringIO()
    update = _progress(True, "cnn", 3, 0, stream=out)
    for epoch in range(3):
        update(epoch, {"train_loss": 1.0 / (epoch + 1), "val_acc": 0.9 + epoch / 100, "img_per_s": 1000.0})
    update(None, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch family=cnn epoch=1/3 loss=1.0000 val_acc=0.9000 img_per_s=1000")
    assert "eta_s=" in lines[0] and lines[-1].endswith("eta_s=0.0")
    quiet = io.StringIO()
    _progress(False, "cnn", 3, 0, stream=quiet)(0, {"train_loss": 1.0, "val_acc": 0.5, "img_per_s": 1.0})
    assert quiet.getvalue() == ""
