"""Evaluation metrics against values computed by hand on tiny tensors."""

import pytest
import torch
import torch.nn as nn

from components.data.datasets import DatasetSpec, ImageTensors
from components.evaluation.metrics import (
    _rnn_flops,
    classification_metrics,
    evaluate_classifier,
    fgsm,
    gflops_per_image,
)
from components.evaluation.report import COLUMNS, write_report


def test_accuracy_f1_confusion_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, y, 2)
    assert m["accuracy"] == pytest.approx(0.75)
    # class 0: P=1/2, R=1 → F1=2/3; class 1: P=1, R=2/3 → F1=0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["confusion"] == [[1, 0], [1, 2]]
    assert m["per_class_accuracy"] == pytest.approx([1.0, 2 / 3])
    # ECE, 15 bins: confidences .9 (right), .6 (wrong), .7 (right), .8 (right), each alone in its bin
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.2) / 4)


def test_flops_of_a_known_conv_and_lstm():
    spec = DatasetSpec(["a", "b"], 1, (8, 8), [0.0], [1.0])
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False))
    assert gflops_per_image(conv, spec) * 1e9 == pytest.approx(2 * 4 * 9 * 64)
    lstm = nn.LSTM(8, 16, batch_first=True)
    assert _rnn_flops(lstm, batch=1, steps=8) == 8 * 4 * 2 * 16 * (8 + 16)

    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 16, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.rnn(x.squeeze(1))[0]

    assert gflops_per_image(Rows(), spec) * 1e9 == pytest.approx(2 * 8 * 4 * 2 * 16 * 24)


def _toy():
    torch.manual_seed(0)
    spec = DatasetSpec(["a", "b"], 1, (4, 4), [0.5], [0.25])
    x = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    y = torch.arange(20) % 2
    x[y == 1] = 255
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = 1.0
        model[1].weight[0] = -1.0
    return spec, ImageTensors(x, y, []), model


def test_fgsm_zero_eps_is_identity_and_attack_hurts():
    spec, data, model = _toy()
    x01 = data.x.float() / 255
    assert torch.equal(fgsm(model, x01, data.y, 0.0, spec), x01)
    adv = fgsm(model, x01, data.y, 0.6, spec)
    assert (adv - x01).abs().max() <= 0.6 + 1e-6


def test_evaluate_classifier_and_report_columns(tmp_path):
    spec, data, model = _toy()
    ev = evaluate_classifier(model, spec, data, latency_runs=5)
    assert ev.accuracy == 1.0 and ev.params == 34 and ev.gflops > 0
    assert {"acc_noise_0.1", "acc_noise_0.3", "acc_fgsm_0.05", "acc_fgsm_0.1"} == set(ev.robustness)
    assert ev.latency_ms_p50 > 0 and ev.throughput_img_s > 0 and len(ev.correct) == 20
    row = {"model": "toy", "family": "cnn", **ev.flat_metrics()}
    html = write_report([row, {"model": "g", "family": "gan", "gan_test": 0.9}], tmp_path / "r", title="t", images={}, notes=["n"], latest=tmp_path / "latest")
    header = (tmp_path / "latest" / "report.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS and html.exists() and (tmp_path / "latest" / "report.md").exists()
    gan_row = (tmp_path / "latest" / "report.csv").read_text().splitlines()[2].split(",")
    assert gan_row[COLUMNS.index("accuracy")] == "" and gan_row[COLUMNS.index("gan_test")] == "0.9"


def test_grad_cam_peaks_where_the_evidence_is():
    """A model whose class-0 score is the mean of one 3×3 conv's ReLU output: its Grad-CAM must peak
    on the bright patch (the only evidence), and the rnn-style model without convs gets saliency."""
    from components.evaluation.explain import explain

    spec = DatasetSpec(["a", "b"], 1, (28, 28), [0.0], [1.0])
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1.0)
    head = nn.Linear(1, 2, bias=False)
    head.weight.data = torch.tensor([[1.0], [-1.0]])
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 20:24, 4:8] = 1.0  # evidence bottom-left
    x[1, 0, 3:7, 18:22] = 1.0  # and top-right
    maps, method = explain(model, x, spec, torch.tensor([0, 0]))
    assert method == "Grad-CAM" and maps.shape == (2, 28, 28)
    for m, (rows, cols) in zip(maps, [(range(19, 25), range(3, 9)), (range(2, 8), range(17, 23))]):
        r, c = divmod(int(m.argmax()), 28)
        assert r in rows and c in cols, (r, c)
        assert float(m[r, c]) == 1.0 and float(m[0, 27 if c < 14 else 0]) < 0.05  # far corners are cold
    flat = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))
    maps, method = explain(flat, x, spec, torch.tensor([0, 1]))
    assert method == "saliency" and maps.shape == (2, 28, 28)
