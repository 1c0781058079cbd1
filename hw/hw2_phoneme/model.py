"""HW2 networks, by model.arch: an MLP over the flattened window; a bidirectional LSTM/GRU
over the window whose centre frame's state goes through an MLP head; or a tagger over whole
utterances (a bidirectional LSTM/GRU or torchaudio's Conformer blocks, by model.cell) that
labels every real frame of a padded batch at once."""

from __future__ import annotations

import torch
from torch import nn

from common.core.registry import Registry
from common.engine.models import MaskedConformer, SpecAugment, build_mlp, length_mask
from hw.hw2_phoneme.data import FEAT_DIM, N_CLASSES

ARCHS = Registry("model.arch")
RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
CELLS = (*RNN_CELLS, "conformer")


class WindowRNN(nn.Module):
    """A bidirectional LSTM/GRU over the (B, n, 39) window; the centre frame's state, through
    an MLP head, gives the class."""

    def __init__(self, cell: str, n_in: int, hidden: int, layers: int, dropout: float,
                 head: nn.Module):
        super().__init__()
        self.rnn = RNN_CELLS[cell](n_in, hidden, num_layers=layers, batch_first=True,
                                   bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, x.shape[1] // 2])


class BiRNN(nn.Module):
    """A stacked bidirectional LSTM/GRU over zero-padded (B, T, D) sequences whose outputs at
    the real frames never depend on the padding: each layer runs forward over the batch as it
    is and backward over every sequence reversed within its own length, so the padding stays
    behind the real frames in both directions. Two plain calls per layer instead of packed
    sequences, whose training step on the CPU is 13 to 18 times slower (scripts/bench/
    hw2_tagger.py); dropout between layers."""

    def __init__(self, cell: str, n_in: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        rnn = RNN_CELLS[cell]
        widths = [n_in, *[2 * hidden] * (layers - 1)]
        self.forward_rnns = nn.ModuleList(rnn(w, hidden, batch_first=True) for w in widths)
        self.backward_rnns = nn.ModuleList(rnn(w, hidden, batch_first=True) for w in widths)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        ends = lengths[:, None].to(x.device)
        reverse = torch.where(t < ends, ends - 1 - t, t).unsqueeze(-1)   # its own inverse
        h = x
        for i, (ahead, back) in enumerate(zip(self.forward_rnns, self.backward_rnns,
                                              strict=True)):
            if i:
                h = self.dropout(h)
            flipped = h.gather(1, reverse.expand(-1, -1, h.shape[-1]))
            behind = back(flipped)[0]
            h = torch.cat([ahead(h)[0], behind.gather(1, reverse.expand(-1, -1,
                                                                         behind.shape[-1]))], -1)
        return h


class Tagger(nn.Module):
    """Per-frame logits for whole utterances: x (B, T, F) zero-padded and lengths (B,) in,
    (sum of lengths, 41) out, the real frames only, utterance after utterance. The RNN runs
    each way within each utterance's length (BiRNN) and the Conformer masks padding in
    attention and convolution, so an utterance's logits do not depend on what it is batched
    with (in eval mode). SpecAugment masks (training only) come first; dropout comes before
    the head."""

    def __init__(self, cfg, n_in: int):
        super().__init__()
        self.specaug = SpecAugment(cfg.freq_mask, cfg.time_mask, cfg.time_masks) \
            if cfg.freq_mask or cfg.time_mask else None
        width = 2 * cfg.rnn_hidden
        self.cell = cfg.cell
        if cfg.cell in RNN_CELLS:
            self.rnn = BiRNN(cfg.cell, n_in, cfg.rnn_hidden, cfg.rnn_layers, cfg.rnn_dropout)
        else:
            self.prenet = nn.Linear(n_in, width)
            self.encoder = MaskedConformer(width, cfg.heads, cfg.ff_dim or 4 * width,
                                           cfg.rnn_layers, cfg.kernel, dropout=cfg.rnn_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = build_mlp(width, cfg.hidden, N_CLASSES, activation=cfg.activation,
                              dropout=cfg.dropout, batchnorm=cfg.batchnorm)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.specaug is not None:
            x = self.specaug(x)
        pad = length_mask(lengths, x.shape[1])
        if self.cell in RNN_CELLS:
            h = self.rnn(x, lengths)
        else:
            h = self.encoder(self.prenet(x), pad)
        return self.head(self.dropout(h[~pad]))   # BatchNorm, if any, sees real frames only


@ARCHS.register("mlp")
def mlp(cfg, *, concat_nframes: int) -> nn.Module:
    return build_mlp(FEAT_DIM * concat_nframes, cfg.hidden, N_CLASSES,
                     activation=cfg.activation, dropout=cfg.dropout, batchnorm=cfg.batchnorm)


@ARCHS.register("lstm", "gru")
def window_rnn(cfg, *, concat_nframes: int) -> nn.Module:
    head = build_mlp(2 * cfg.rnn_hidden, cfg.hidden, N_CLASSES, activation=cfg.activation,
                     dropout=cfg.dropout, batchnorm=cfg.batchnorm)
    return WindowRNN(cfg.arch, FEAT_DIM, cfg.rnn_hidden, cfg.rnn_layers, cfg.rnn_dropout, head)


@ARCHS.register("tagger")
def tagger(cfg, *, concat_nframes: int) -> nn.Module:
    return Tagger(cfg, FEAT_DIM * concat_nframes)
