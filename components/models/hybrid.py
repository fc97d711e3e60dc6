"""Hybrid family — the paper's three fusions.

- `cnn_lstm` (architecture fusion): a conv front, then a BiLSTM reads the feature map's columns.
- `feature_fusion`: CNN and RNN embeddings concatenated into one head, trained jointly.
- `decision_fusion`: y = α·f1(x) + (1−α)·f2(x) over two trained classifiers' probabilities; α is
  chosen on the validation split (`choose_alpha`) and kept in the module (a buffer) for the record.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from components.models import register_model
from components.models.cnn import ResNetSmall
from components.models.rnn import RowRNN, SequenceReader


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )  # fmt: skip


class CNNLSTM(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], widths=(32, 64), hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        chans = [in_channels, *widths]
        self.front = nn.Sequential(*[_double_conv(a, b) for a, b in zip(chans[:-1], chans[1:])])
        h = image_size[0] // 2 ** len(widths)
        if h < 1:
            raise ValueError(f"cnn_lstm: image height {image_size[0]} is too small for {len(widths)} pooling stages")
        self.reader = SequenceReader(widths[-1] * h, hidden, 1, "lstm", True, 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.reader.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.front(x).contiguous()  # (B, C, h, w)
        b, c, h, w = f.shape
        seq = f.permute(0, 3, 1, 2).reshape(b, w, c * h)  # one step per column
        return self.fc(self.dropout(self.reader(seq)))


class FeatureFusion(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], cnn: dict | None = None, rnn: dict | None = None, dropout: float = 0.3):
        super().__init__()
        self.cnn = ResNetSmall(num_classes, in_channels, **(cnn or {}))
        self.rnn = RowRNN(num_classes, in_channels, image_size, **(rnn or {}))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.cnn.embedding_dim + self.rnn.embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.cat([self.cnn.embed(x), self.rnn.embed(x)], dim=1)))


class DecisionFusion(nn.Module):
    """Returns log(α·p1 + (1−α)·p2) with p_i = softmax(f_i(x) / T_i): log-probabilities, so
    softmax/argmax behave like logits. T_i calibrates each member (fitted on validation; 1 = as trained)."""

    def __init__(self, f1: nn.Module, f2: nn.Module, alpha: float = 0.5, t1: float = 1.0, t2: float = 1.0):
        super().__init__()
        self.f1, self.f2 = f1, f2
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("t1", torch.tensor(float(t1)))
        self.register_buffer("t2", torch.tensor(float(t2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = torch.softmax(self.f1(x).float() / self.t1, 1)
        p2 = torch.softmax(self.f2(x).float() / self.t2, 1)
        return torch.log((self.alpha * p1 + (1 - self.alpha) * p2).clamp_min(1e-12))


def _nll(p: torch.Tensor, y: torch.Tensor) -> float:
    return -torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).mean().item()


def fit_temperature(p_val: torch.Tensor, y_val: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017) on validation: the T in [0.25, 4] (log grid) whose
    softmax(log p / T) has the lowest NLL. One scalar: the argmax, so accuracy, never changes."""
    logp = torch.log(p_val.clamp_min(1e-12))
    grid = torch.exp(torch.linspace(math.log(0.25), math.log(4.0), 41)).tolist()
    return min(grid, key=lambda t: (_nll(torch.softmax(logp / t, 1), y_val), abs(math.log(t))))


def calibrate(p_val: torch.Tensor, t: float) -> torch.Tensor:
    return torch.softmax(torch.log(p_val.clamp_min(1e-12)) / t, 1)


def choose_alpha(p1_val: torch.Tensor, p2_val: torch.Tensor, y_val: torch.Tensor, steps: int = 21, criterion: str = "accuracy") -> tuple[float, float]:
    """α on the validation split. accuracy: best accuracy, ties broken by lower NLL, then by
    closeness to 0.5; nll: lowest NLL (smooth: a few hundred validation images rarely separate α
    by accuracy), ties by closeness to 0.5. Returns (α, validation accuracy at α)."""
    best: tuple | None = None
    for i in range(steps):
        a = i / (steps - 1)
        p = a * p1_val + (1 - a) * p2_val
        acc = (p.argmax(1) == y_val).float().mean().item()
        nll = _nll(p, y_val)
        key = (-acc, nll, abs(a - 0.5), a, acc) if criterion == "accuracy" else (nll, abs(a - 0.5), 0.0, a, acc)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[3], best[4]


@register_model("cnn_lstm", family="hybrid", defaults={"train": {"grad_clip": 1.0}})
def cnn_lstm(*, num_classes: int, in_channels: int, image_size: tuple[int, int], **hparams) -> nn.Module:
    return CNNLSTM(num_classes, in_channels, image_size, **hparams)


@register_model("feature_fusion", family="hybrid", defaults={"enabled": False, "train": {"grad_clip": 1.0}})
def feature_fusion(*, num_classes: int, in_channels: int, image_size: tuple[int, int], **hparams) -> nn.Module:
    return FeatureFusion(num_classes, in_channels, image_size, **hparams)


@register_model("decision_fusion", family="hybrid", kind="fusion")
def decision_fusion(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    members=("cnn", "cnn_lstm"),
    alpha: float = 0.5,
    member_hparams: dict | None = None,
    temperatures: tuple[float, float] = (1.0, 1.0),
) -> nn.Module:
    """Untrained members of the named models; the pipeline loads trained weights and sets α."""
    from components.models import create_model

    hp = member_hparams or {}
    f1, f2 = (create_model(m, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **hp.get(m, {})) for m in members)
    return DecisionFusion(f1, f2, alpha, *temperatures)
