"""HW5 Transformer: pre-norm encoder-decoder on torch.nn and F.scaled_dot_product_attention,
one embedding shared by source, target and output, sinusoidal or learned positions, and
incremental decoding: each layer keeps its self-attention keys and values and the
cross-attention projections of the encoder output, so a step costs one position."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from common.core.errors import UserError
from common.core.registry import Registry

PAD = 0                       # the SentencePiece model's padding id
ARCHS = Registry("model.arch")  # (model config, vocabulary size) -> model


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out = nn.Linear(d_model, d_model)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, causal: bool = False,
                cache: dict | None = None, static: bool = False) -> torch.Tensor:
        """x attends to kv (x itself when None). mask: (B, 1, 1, S) True where allowed.
        cache: self-attention appends this step's keys and values; `static` (cross-attention)
        computes the keys and values of kv once and reuses them."""
        q = self.split(self.q(x))
        if static and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            src = x if kv is None else kv
            k, v = self.split(self.k(src)), self.split(self.v(src))
            if cache is not None:
                if not static and "k" in cache:
                    k = torch.cat([cache["k"], k], 2)
                    v = torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        if causal and q.shape[2] > 1:
            t, s = q.shape[2], k.shape[2]
            allowed = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
            mask = allowed if mask is None else mask & allowed
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, _, t, dh = h.shape
        return self.out(h.transpose(1, 2).reshape(b, t, self.heads * dh))


class Layer(nn.Module):
    """A pre-norm block: self-attention, (cross-attention,) feed-forward, each residual."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float, cross: bool):
        super().__init__()
        self.self_attn, self.norm1 = Attention(d_model, heads, dropout), nn.LayerNorm(d_model)
        self.cross = Attention(d_model, heads, dropout) if cross else None
        self.norm2 = nn.LayerNorm(d_model) if cross else None
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff, d_model))
        self.norm3, self.drop = nn.LayerNorm(d_model), nn.Dropout(dropout)

    def forward(self, x, *, mask=None, memory=None, memory_mask=None, causal=False,
                cache: dict | None = None):
        x = x + self.drop(self.self_attn(self.norm1(x), mask=mask, causal=causal,
                                         cache=None if cache is None else cache["self"]))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm2(x), memory, mask=memory_mask,
                                         cache=None if cache is None else cache["cross"],
                                         static=True))
        return x + self.drop(self.ff(self.norm3(x)))


def sinusoids(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table


class Seq2SeqTransformer(nn.Module):
    def __init__(self, vocab: int, *, d_model: int = 256, heads: int = 4, enc_layers: int = 3,
                 dec_layers: int = 3, ff: int = 1024, dropout: float = 0.1,
                 positions: str = "sinusoidal", max_positions: int = 1024, pad: int = 0):
        super().__init__()
        self.pad, self.scale = pad, math.sqrt(d_model)
        self.embed = nn.Embedding(vocab, d_model, padding_idx=pad)
        nn.init.normal_(self.embed.weight, 0, d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[pad].zero_()
        if positions == "learned":
            self.enc_pos = nn.Parameter(torch.randn(max_positions, d_model) * 0.02)
            self.dec_pos = nn.Parameter(torch.randn(max_positions, d_model) * 0.02)
        else:
            self.register_buffer("enc_pos", sinusoids(max_positions, d_model), persistent=False)
            self.register_buffer("dec_pos", sinusoids(max_positions, d_model), persistent=False)
        self.encoder = nn.ModuleList(Layer(d_model, heads, ff, dropout, False)
                                     for _ in range(enc_layers))
        self.decoder = nn.ModuleList(Layer(d_model, heads, ff, dropout, True)
                                     for _ in range(dec_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, S, d), mask (B, 1, 1, S) True on real tokens)."""
        mask = (src != self.pad)[:, None, None, :]
        x = self.drop(self.embed(src) * self.scale + self.enc_pos[:src.shape[1]])
        for layer in self.encoder:
            x = layer(x, mask=mask)
        return self.enc_norm(x), mask

    def new_cache(self) -> list[dict]:
        return [{"self": {}, "cross": {}} for _ in self.decoder]

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, *,
               cache: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """Logits (B, T, V) for target positions start..start+T-1 (causal). With a cache, tgt
        holds only the new positions and earlier keys and values come from the cache."""
        x = self.drop(self.embed(tgt) * self.scale + self.dec_pos[start:start + tgt.shape[1]])
        for k, layer in enumerate(self.decoder):
            x = layer(x, memory=memory, memory_mask=memory_mask, causal=True,
                      cache=None if cache is None else cache[k])
        return self.dec_norm(x) @ self.embed.weight.T

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


def reorder_cache(cache: list[dict], index: torch.Tensor) -> None:
    """Keep the rows `index` of every cached tensor (beams chosen at a step)."""
    for layer in cache:
        for part in layer.values():
            for name in list(part):
                part[name] = part[name].index_select(0, index)


class Seq2SeqRNN(nn.Module):
    """The course's RNN: a bidirectional GRU encoder; a GRU decoder whose input embedding first
    attends (dot product) over the encoder outputs, the context and the projected input joined
    by a linear layer and tanh; decoder hidden = 2 x encoder hidden, started from the encoder's
    final forward and backward states; input, output and source embeddings shared. The same
    encode / decode / new_cache interface as the Transformer, the cache holding the GRU state."""

    def __init__(self, vocab: int, *, embed: int = 256, hidden: int = 512, enc_layers: int = 1,
                 dec_layers: int = 1, dropout: float = 0.3, pad: int = 0):
        super().__init__()
        self.pad, self.hidden, self.dec_layers = pad, hidden, dec_layers
        self.embed = nn.Embedding(vocab, embed, padding_idx=pad)
        self.encoder = nn.GRU(embed, hidden, enc_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if enc_layers > 1 else 0.0)
        self.input_proj = nn.Linear(embed, 2 * hidden, bias=False)
        self.output_proj = nn.Linear(4 * hidden, embed, bias=False)
        self.decoder = nn.GRU(embed, 2 * hidden, dec_layers, batch_first=True,
                              dropout=dropout if dec_layers > 1 else 0.0)
        self.project_out = nn.Linear(2 * hidden, embed)
        self.drop = nn.Dropout(dropout)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0, 0.02)
            elif isinstance(module, nn.GRU):
                for weight in module.parameters():
                    nn.init.uniform_(weight, -0.1, 0.1)
        with torch.no_grad():
            self.embed.weight[pad].zero_()

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs (B, S, 2H), mask (B, 1, 1, S) True on real tokens; an empty source keeps
        its first position)."""
        lengths = (src != self.pad).sum(1).clamp_min(1)
        mask = torch.arange(src.shape[1], device=src.device) < lengths[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.embed(src)), lengths.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=src.shape[1])
        return self.drop(out), mask[:, None, None, :]

    def initial_state(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, layers, 2H): the forward direction's last output and the backward direction's
        first, i.e. the encoder's final states, for every decoder layer."""
        last = mask[:, 0, 0].sum(1) - 1
        rows = torch.arange(len(memory), device=memory.device)
        h0 = torch.cat([memory[rows, last, :self.hidden], memory[:, 0, self.hidden:]], -1)
        return h0[:, None].expand(-1, self.dec_layers, -1).contiguous()

    def new_cache(self) -> list[dict]:
        return [{"rnn": {}}]

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, *,
               cache: list[dict] | None = None, start: int = 0) -> torch.Tensor:
        """Logits (B, T, V); with a cache, tgt holds only the new positions."""
        state = None if cache is None else cache[0]["rnn"]
        h = state["h"] if state and "h" in state else self.initial_state(memory, memory_mask)
        x = self.input_proj(self.drop(self.embed(tgt)))
        context = F.scaled_dot_product_attention(x[:, None], memory[:, None], memory[:, None],
                                                 attn_mask=memory_mask, scale=1.0)[:, 0]
        x = torch.tanh(self.output_proj(torch.cat([context, x], -1)))
        x, h = self.decoder(x, h.transpose(0, 1).contiguous())
        if state is not None:
            state["h"] = h.transpose(0, 1)
        return self.project_out(self.drop(x)) @ self.embed.weight.T

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


@ARCHS.register("transformer")
def transformer(cfg, *, vocab: int) -> Seq2SeqTransformer:
    if cfg.d_model % cfg.heads:
        raise UserError(f"model.d_model={cfg.d_model} must be a multiple of "
                        f"model.heads={cfg.heads}")
    return Seq2SeqTransformer(vocab, d_model=cfg.d_model, heads=cfg.heads,
                              enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
                              ff=cfg.ff_dim, dropout=cfg.dropout, positions=cfg.positions,
                              pad=PAD)


@ARCHS.register("rnn")
def rnn(cfg, *, vocab: int) -> Seq2SeqRNN:
    return Seq2SeqRNN(vocab, embed=cfg.d_model, hidden=cfg.rnn_hidden,
                      enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
                      dropout=cfg.dropout, pad=PAD)
