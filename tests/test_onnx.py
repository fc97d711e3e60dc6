"""The slim serving path: classifiers exported to ONNX answer like the torch models they came from.

Trained models (real digits from the bundled set, one short epoch each) keep every label and their
probabilities within 1e-4 under onnxruntime; every registered family exports with a dynamic batch
axis; OnnxModel answers like serving.runtime.LoadedModel (gray and RGB, non-square photos) and
imports neither torch nor mlflow; the GAN and broken models fail with one line that says what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import EngineConfig, TrainConfig
from components.data.datasets import DatasetSpec, ImageTensors, normalize, to_unit
from components.data.ingest import _bundled_mnist_arrays
from components.data.preprocess import normalize_batch, softmax, unit_batch
from components.data.synthetic import photo
from components.models import create_model, list_models
from components.models.hybrid import DecisionFusion
from components.packaging.onnx_export import ExportError, check_parity, export_onnx, write_onnx_dir
from components.training.classifier import fit
from serving.onnx_model import NotSupported, OnnxModel, load_onnx_dir
from serving.runtime import LoadedModel
from tests.conftest import REPO_ROOT

DIGITS = DatasetSpec([str(i) for i in range(10)], 1, (28, 28), [0.13], [0.3])
PHOTOS = DatasetSpec(["circle", "square", "triangle", "cross"], 3, (20, 28), [0.45, 0.4, 0.38], [0.25, 0.24, 0.26], "crop")
SMALL = {
    "cnn": {"widths": [8, 16], "downsample": "pool"},
    "rnn": {"hidden": 16, "layers": 1, "read": "rows+cols"},
    "cnn_lstm": {"widths": [8, 16], "hidden": 16},
    "feature_fusion": {"cnn": {"widths": [8, 16]}, "rnn": {"hidden": 16, "layers": 1}},
    "decision_fusion": {"member_hparams": {"cnn": {"widths": [8, 16]}, "cnn_lstm": {"widths": [8, 16], "hidden": 16}}},
    "torchvision:mobilenet_v3_small": {},
    "torchvision:resnet18": {},
}
LABELS = {"registered_model": "visionflow-classifier", "registered_version": "7", "run_id": "abc123", "data_version": "d1", "params_hash": "p1",
          "git_commit": "g1", "family": "cnn"}  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> tuple[ImageTensors, ImageTensors]:
    images, labels = _bundled_mnist_arrays()
    x, y = torch.from_numpy(images).view(-1, 1, 28, 28), torch.from_numpy(labels.astype("int64"))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:600], perm[600:900]
    return ImageTensors(x[train], y[train], []), ImageTensors(x[test], y[test], [])


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """name → a model trained one epoch on the digits (as the engine leaves it: channels_last)."""
    train, test = digits
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            if name == "decision_fusion":
                cache[name] = DecisionFusion(get("cnn"), get("cnn_lstm"), alpha=0.6, t1=1.3, t2=0.8).eval()
            else:
                torch.manual_seed(0)
                model = create_model(name, num_classes=10, in_channels=1, image_size=(28, 28), **SMALL[name])
                cfg = TrainConfig(epochs=1, batch_size=32, lr=3e-3, augment="none", precision="fp32")
                fit(model, train, test, DIGITS, cfg, EngineConfig(device="cpu", progress=False), workdir=tmp_path_factory.mktemp(name.replace(":", "_")))
                cache[name] = model.eval()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def cnn_dir(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_cnn")
    write_onnx_dir(trained("cnn"), DIGITS, out)
    return out


def _normalised(data: ImageTensors, spec: DatasetSpec) -> np.ndarray:
    return normalize_batch(data.x.numpy().astype(np.float32) / np.float32(255), spec)


@pytest.mark.parametrize("name", ["cnn", "rnn", "cnn_lstm", "feature_fusion", "decision_fusion", pytest.param("torchvision:resnet18", marks=pytest.mark.slow)])
def test_trained_classifier_keeps_every_label_under_onnxruntime(name, trained, digits, tmp_path):
    model = trained(name)
    if name == "cnn":  # the engine trains in channels_last; the export must not care
        assert model.features.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    exported = export_onnx(model, DIGITS, tmp_path / "model.onnx")
    assert exported.exporter == "dynamo" and exported.opset == 18 and exported.path.stat().st_size == exported.size_bytes
    x = _normalised(digits[1], DIGITS)
    parity = check_parity(model, exported.path, x, batch_size=128)
    assert parity.n == len(x) == 300
    assert parity.passed and parity.label_mismatches == 0 and parity.max_abs_prob_diff <= 1e-4, parity
    assert model.training is False  # the caller's model is left as it was


@pytest.mark.parametrize("name", [n for n in list_models() if n != "gan"] + [pytest.param("torchvision:mobilenet_v3_small", marks=pytest.mark.slow)])
def test_every_family_exports_with_a_dynamic_batch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=PHOTOS.num_classes, in_channels=3, image_size=PHOTOS.image_size, **SMALL[name]).eval()
    exported = write_onnx_dir(model, PHOTOS, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "spec.json", "export.json"}
    assert DatasetSpec.from_json((tmp_path / "spec.json").read_text()) == PHOTOS
    assert json.loads((tmp_path / "export.json").read_text())["exporter"] == exported.exporter
    served = OnnxModel(tmp_path / "model.onnx", PHOTOS, "m", "1", "r")
    rng = np.random.default_rng(1)
    for batch in (1, 3, 7):
        x = rng.standard_normal((batch, 3, *PHOTOS.image_size), dtype=np.float32)
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        got = served.probabilities(x)
        assert got.shape == (batch, PHOTOS.num_classes)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def _same_answers(ours, theirs):
    (a_onnx, s_onnx), (a_torch, s_torch) = ours, theirs
    assert len(a_onnx) == len(a_torch)
    for a, b in zip(a_onnx, a_torch):
        assert a.keys() == b.keys() and (a["label"], a["class_name"]) == (b["label"], b["class_name"])
        assert {k: a[k] for k in ("model", "data_version", "params_hash", "git_commit")} == {
            k: b[k] for k in ("model", "data_version", "params_hash", "git_commit")
        }
        assert a["probabilities"].keys() == b["probabilities"].keys() and abs(a["confidence"] - b["confidence"]) <= 1e-4
        assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) <= 1e-4
        assert all(round(v, 6) == v for v in a["probabilities"].values())
    np.testing.assert_allclose(np.array(s_onnx), np.array(s_torch), atol=1e-6)


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    imgs = [photo(shape, rng, size) for shape, size in [("circle", (61, 45)), ("square", (40, 90)), ("triangle", (28, 20)), ("cross", (33, 33))]]
    imgs.append(imgs[0].convert("L"))  # a gray file for an RGB model
    rgba = imgs[1].convert("RGBA")
    rgba.putalpha(128)
    return [*imgs, rgba]


def test_onnx_model_answers_like_the_torch_service(trained, digits, cnn_dir):
    digit_imgs = [Image.fromarray(a[0]) for a in digits[1].x[:6].numpy()] + [_photos()[1]]  # + an RGB non-square photo for a gray model
    torch_model = LoadedModel(trained("cnn"), DIGITS, LABELS["registered_model"], LABELS["registered_version"], LABELS["run_id"], dict(LABELS))
    served = load_onnx_dir(cnn_dir, LABELS)
    assert (served.name, served.version, served.run_id, served.tags["data_version"]) == ("visionflow-classifier", "7", "abc123", "d1")
    assert served.lineage() == torch_model.lineage() and served.runtime == "onnxruntime"
    _same_answers(served.predict(digit_imgs), torch_model.predict(digit_imgs))
    assert served.classify(digit_imgs[:1])[0]["label"] == torch_model.classify(digit_imgs[:1])[0]["label"]


def test_onnx_model_answers_like_the_torch_service_for_rgb_photos(tmp_path):
    torch.manual_seed(2)
    model = create_model("cnn", num_classes=PHOTOS.num_classes, in_channels=3, image_size=PHOTOS.image_size, **SMALL["cnn"]).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(20)  # spread the untrained logits: answers that are not near-ties
    write_onnx_dir(model, PHOTOS, tmp_path)
    imgs = _photos()
    _same_answers(load_onnx_dir(tmp_path, LABELS).predict(imgs), LoadedModel(model, PHOTOS, "visionflow-classifier", "7", "abc123", dict(LABELS)).predict(imgs))


def test_preprocessing_without_torch_is_bit_identical():
    vals = np.arange(256, dtype=np.uint8).reshape(16, 16)
    imgs = [*_photos(), Image.fromarray(np.stack([vals] * 3, -1))]
    for spec in (PHOTOS, DIGITS, DatasetSpec(["a"], 3, (16, 16), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "pad")):
        x01 = unit_batch(imgs, spec)
        assert x01.dtype == np.float32 and np.array_equal(x01, to_unit(imgs, spec).numpy())
        assert np.array_equal(normalize_batch(x01, spec), normalize(torch.from_numpy(x01), spec).numpy())
    logits = torch.randn(5, 7) * 30
    np.testing.assert_allclose(softmax(logits.numpy()), torch.softmax(logits, 1).numpy(), atol=1e-7)


@pytest.mark.integration  # a subprocess
def test_onnx_service_imports_neither_torch_nor_mlflow(cnn_dir, tmp_path):
    _photos()[0].save(tmp_path / "photo.png")
    code = (
        "import json, sys\n"
        "from PIL import Image\n"
        "from serving.onnx_model import load_onnx_dir\n"
        f"m = load_onnx_dir({str(cnn_dir)!r}, {LABELS!r}, threads=1)\n"
        f"answers, stats = m.predict([Image.open({str(tmp_path / 'photo.png')!r})])\n"
        "print(json.dumps({'answer': answers[0], 'torch': 'torch' in sys.modules, 'mlflow': 'mlflow' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["mlflow"] is False
    assert out["answer"]["model"] == {"name": "visionflow-classifier", "version": "7", "run_id": "abc123"} and out["answer"]["class_name"] in DIGITS.classes


def test_what_cannot_be_served_by_onnx_fails_in_one_line(cnn_dir, tmp_path):
    gan = create_model("gan", num_classes=3, in_channels=1, image_size=(12, 12), z_dim=8, ngf=8, ndf=8)
    spec = DatasetSpec(["a", "b", "c"], 1, (12, 12), [0.5], [0.5])
    for model in (gan, gan.generator_ema):
        with pytest.raises(ExportError) as err:
            export_onnx(model, spec, tmp_path / "gan.onnx")
        msg = str(err.value)
        assert "\n" not in msg and "generator" in msg and "visionflow package --image --flavour full" in msg, msg
    assert not (tmp_path / "gan.onnx").exists()

    class WrongShape(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ExportError, match=r"^cannot export WrongShape to ONNX: its forward returns \(2, 144\), not \(N, 3\) class scores; serve it"):
        export_onnx(WrongShape(), spec, tmp_path / "w.onnx")

    class NoOnnxOp(torch.nn.Module):  # an op neither exporter can translate
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(144, 3)

        def forward(self, x):
            return self.fc(torch.special.bessel_j0(x.flatten(1)))

    with pytest.raises(ExportError) as err:
        export_onnx(NoOnnxOp(), spec, tmp_path / "b.onnx")
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg and msg.startswith("cannot export NoOnnxOp to ONNX: dynamo exporter: ") and "bessel_j0" in msg, msg
    assert "torchscript exporter: " in msg and msg.endswith("; serve it from the full image: visionflow package --image --flavour full"), msg
    assert not (tmp_path / "b.onnx").exists()
    with pytest.raises(NotSupported, match="gradients.*visionflow package --image --flavour full"):
        load_onnx_dir(cnn_dir, LABELS).explain(Image.new("L", (28, 28)))
    with pytest.raises(ValueError, match="do not belong together"):
        OnnxModel(cnn_dir / "model.onnx", PHOTOS, "m", "1", "r")
