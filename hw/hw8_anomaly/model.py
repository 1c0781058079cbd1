"""HW8's autoencoders, chosen by model.arch. Each takes images scaled to [-1, 1]
(`common.data.images.signed_pixels`) and returns (reconstruction in [-1, 1], KL divergence per
image: zeros but for the VAE).

- fcn: the course's fully connected autoencoder (12288 -> 128 -> 64 -> 12 -> 3 and back,
  widths `model.hidden`);
- conv: the course's convolutional autoencoder (three stride-2 4x4 convolutions, 12/24/48
  channels, `model.widths`, mirrored by transposed convolutions);
- vae: the course's VAE (the conv encoder with a mean and a log-variance head);
- resae: ours, a residual convolutional autoencoder with a narrow linear bottleneck
  (`model.latent`): stride-2 stages of `model.widths` with a residual block each; trained
  as a denoiser (`model.noise`), it must rebuild a face from a code too small to copy pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from common.core.registry import Registry

ARCHS = Registry("model.arch")  # (model config, side) -> model


class AutoEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: torch.Tensor):
        return self.decoder(self.encoder(x)), x.new_zeros(len(x))


def _chain(widths: list[int], last_act: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers += [nn.Linear(a, b), nn.ReLU() if i < len(widths) - 2 else last_act]
    return layers


@ARCHS.register("fcn")
def fcn(cfg, *, side: int) -> nn.Module:
    dims = [3 * side * side, *cfg.hidden]
    encoder = nn.Sequential(nn.Flatten(), *_chain(dims, nn.Identity()))
    decoder = nn.Sequential(*_chain(dims[::-1], nn.Tanh()), nn.Unflatten(1, (3, side, side)))
    return AutoEncoder(encoder, decoder)


def _conv_stack(widths: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip([3, *widths], widths, strict=False):
        layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
    return layers


def _deconv_stack(widths: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    back = [*widths[::-1], 3]
    for i, (a, b) in enumerate(zip(back, back[1:], strict=False)):
        layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1),
                   nn.ReLU() if i < len(back) - 2 else nn.Tanh()]
    return layers


@ARCHS.register("conv")
def conv(cfg, *, side: int) -> nn.Module:
    return AutoEncoder(nn.Sequential(*_conv_stack(cfg.widths)),
                       nn.Sequential(*_deconv_stack(cfg.widths)))


class VAE(nn.Module):
    """Encoder -> (mean, log-variance) maps -> a sample (the mean when evaluating) -> decoder;
    KL(q(z|x) || N(0, I)) summed over the code, per image."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.encoder = nn.Sequential(*_conv_stack(widths[:-1]))
        last = widths[-2] if len(widths) > 1 else 3
        self.mean = nn.Sequential(nn.Conv2d(last, widths[-1], 4, stride=2, padding=1), nn.ReLU())
        self.logvar = nn.Sequential(nn.Conv2d(last, widths[-1], 4, stride=2, padding=1),
                                    nn.ReLU())
        self.decoder = nn.Sequential(*_deconv_stack(widths))

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).flatten(1).sum(1)
        return self.decoder(z), kl


@ARCHS.register("vae")
def vae(cfg, *, side: int) -> nn.Module:
    return VAE(cfg.widths)


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width))
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(x + self.body(x))


@ARCHS.register("resae")
def resae(cfg, *, side: int) -> nn.Module:
    down: list[nn.Module] = []
    up: list[nn.Module] = []
    for a, b in zip([3, *cfg.widths], cfg.widths, strict=False):
        down += [nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b),
                 nn.SiLU(), Residual(b)]
    back = [*cfg.widths[::-1], 3]
    for i, (a, b) in enumerate(zip(back, back[1:], strict=False)):
        last = i == len(back) - 2
        up += [Residual(a), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=last)]
        up += [nn.Tanh()] if last else [nn.BatchNorm2d(b), nn.SiLU()]
    small = side // 2 ** len(cfg.widths)
    flat = cfg.widths[-1] * small * small
    encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, cfg.latent))
    decoder = nn.Sequential(nn.Linear(cfg.latent, flat), nn.SiLU(),
                            nn.Unflatten(1, (cfg.widths[-1], small, small)), *up)
    return AutoEncoder(encoder, decoder)
