"""RNN family: an LSTM or GRU reading the image row by row (H steps of W·C features).

Mean+max pooling over time (classifying from the last step only wastes the backward direction).
`read: rows+cols` adds a second recurrent reader over columns (W steps of H·C features).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from components.models import register_model


class SequenceReader(nn.Module):
    def __init__(self, step_features: int, hidden: int, layers: int, cell: str, bidirectional: bool, dropout: float):
        super().__init__()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_cls(step_features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.out_dim = 2 * hidden * (2 if bidirectional else 1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(seq)
        return torch.cat([out.mean(dim=1), out.amax(dim=1)], dim=1)


class RowRNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: int = 128, layers: int = 2,
                 cell: Literal["lstm", "gru"] = "lstm", bidirectional: bool = True, dropout: float = 0.2,
                 read: Literal["rows", "rows+cols"] = "rows"):  # fmt: skip
        super().__init__()
        h, w = image_size
        self.rows = SequenceReader(w * in_channels, hidden, layers, cell, bidirectional, dropout)
        self.cols = SequenceReader(h * in_channels, hidden, layers, cell, bidirectional, dropout) if read == "rows+cols" else None
        self.embedding_dim = self.rows.out_dim + (self.cols.out_dim if self.cols else 0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.embedding_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.contiguous()  # channels_last inputs: the sequence view needs plain NCHW order
        feats = [self.rows(x.permute(0, 2, 3, 1).reshape(b, h, w * c))]
        if self.cols is not None:
            feats.append(self.cols(x.permute(0, 3, 2, 1).reshape(b, w, h * c)))
        return self.dropout(torch.cat(feats, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


@register_model("rnn", family="rnn", defaults={"train": {"grad_clip": 1.0}})
def rnn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], **hparams) -> nn.Module:
    return RowRNN(num_classes, in_channels, image_size, **hparams)
