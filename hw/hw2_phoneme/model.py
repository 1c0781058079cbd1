"""HW2 networks, by model.arch: an MLP over the flattened window, or a bidirectional LSTM/GRU
over the window whose centre frame's state goes through an MLP head."""

from __future__ import annotations

import torch
from torch import nn

from common.core.registry import Registry
from common.engine.models import build_mlp
from hw.hw2_phoneme.data import FEAT_DIM, N_CLASSES

ARCHS = Registry("model.arch")


class WindowRNN(nn.Module):
    """A bidirectional LSTM/GRU over the (B, n, 39) window; the centre frame's state, through
    an MLP head, gives the class."""

    def __init__(self, cell: str, n_in: int, hidden: int, layers: int, dropout: float,
                 head: nn.Module):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(n_in, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, x.shape[1] // 2])


@ARCHS.register("mlp")
def mlp(cfg, *, concat_nframes: int) -> nn.Module:
    return build_mlp(FEAT_DIM * concat_nframes, cfg.hidden, N_CLASSES,
                     activation=cfg.activation, dropout=cfg.dropout, batchnorm=cfg.batchnorm)


@ARCHS.register("lstm", "gru")
def window_rnn(cfg, *, concat_nframes: int) -> nn.Module:
    head = build_mlp(2 * cfg.rnn_hidden, cfg.hidden, N_CLASSES, activation=cfg.activation,
                     dropout=cfg.dropout, batchnorm=cfg.batchnorm)
    return WindowRNN(cfg.arch, FEAT_DIM, cfg.rnn_hidden, cfg.rnn_layers, cfg.rnn_dropout, head)
