"""HW6 networks. DCGAN: the course's generator and discriminator (exactly so at 64 x 64: a
100-d z, Linear to 512 x 4 x 4, three ConvTranspose blocks, tanh; four stride-2 convolutions,
a 4 x 4 head), any other power-of-two size by one block per doubling, the discriminator's
norm chosen (batch for GAN/WGAN, instance or none for WGAN-GP). Style: a style-based generator
(mapping network, modulated and demodulated convolutions, per-pixel noise, a learned 4 x 4
constant, RGB skips) and a residual discriminator with a minibatch standard deviation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from common.core.errors import UserError
from common.core.registry import Registry

# (G, D) pairs by model.arch: a function of (model config, image size)
ARCHS = Registry("model.arch")
NORMS = ("batch", "instance", "layer", "none")


def doublings(size: int) -> int:
    """Doublings from 4 x 4 to size x size; a size the networks cannot build is one line."""
    levels = int(round(math.log2(size))) - 2
    if size < 8 or 2 ** (levels + 2) != size:
        raise UserError(f"data.image_size={size} must be a power of two from 8 up (64: the "
                        "course's)")
    return levels


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def dcgan_init(module: nn.Module) -> None:
    """The course's initialisation: conv weights N(0, 0.02), norm weights N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm) \
                and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, *, z_dim: int = 100, width: int = 64, size: int = 64):
        super().__init__()
        levels = doublings(size)                  # 4 at 64 x 64: three blocks and the output
        top = width * 2 ** (levels - 1)           # 512 at 64 x 64
        self.top = top
        self.fc = nn.Sequential(nn.Linear(z_dim, top * 16, bias=False),
                                nn.BatchNorm1d(top * 16), nn.ReLU())
        blocks, ch = [], top
        for _ in range(levels - 1):
            blocks += [nn.ConvTranspose2d(ch, ch // 2, 5, 2, padding=2, output_padding=1,
                                          bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        blocks += [nn.ConvTranspose2d(ch, 3, 5, 2, padding=2, output_padding=1, bias=False),
                   nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """`truncation` is the style generator's; DCGAN's z has no average to pull toward."""
        return self.body(self.fc(z).view(len(z), self.top, 4, 4))


class DCGANDiscriminator(nn.Module):
    """Outputs one logit per image (the course's Sigmoid is folded into the BCE loss, which is
    the same function, computed stably); a critic for WGAN."""

    def __init__(self, *, width: int = 64, size: int = 64, norm: str = "batch"):
        super().__init__()
        levels = doublings(size)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(levels - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), _norm2d(norm, ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]
        self.body = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).view(len(x))


# --------------------------------------------------------------------------- style-based
class EqualLinear(nn.Module):
    """A linear layer with the weight scaled at run time (equalised learning rate)."""

    def __init__(self, fan_in: int, fan_out: int, *, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((fan_out,), float(bias_init)))
        self.scale, self.lr_mul = lr_mul / math.sqrt(fan_in), lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv(nn.Module):
    """A 3 x 3 (or 1 x 1) convolution whose input channels are scaled per sample by a style
    and whose output is demodulated to unit variance, as one grouped convolution."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, kernel: int = 3,
                 demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.style = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.padding = demodulate, kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c, h, wd = x.shape
        s = self.style(w)                                          # (B, in)
        weight = self.weight[None] * self.scale * s[:, None, :, None, None]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * c, h, wd), weight.reshape(-1, c, *weight.shape[3:]),
                       padding=self.padding, groups=b)
        return out.view(b, -1, h, wd)


class StyleLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        noise = torch.randn(len(x), 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        x = x + self.noise_strength * noise + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_ch, 3, w_dim, kernel=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """z -> mapping MLP -> w; from a learned 4 x 4 constant, two style layers per resolution
    (upsampling bilinearly between), RGB outputs summed across resolutions (skips). At
    generation, w can be pulled toward the average w (truncation psi < 1)."""

    def __init__(self, *, z_dim: int = 512, w_dim: int = 256, mapping: int = 8,
                 width: int = 256, size: int = 64, max_channels: int = 256,
                 mapping_lr: float = 0.01):
        super().__init__()
        levels = doublings(size)
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        for k in range(mapping):
            layers += [EqualLinear(z_dim if k == 0 else w_dim, w_dim, lr_mul=mapping_lr),
                       nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))
        channels = [min(max_channels, width * 2 ** max(0, 3 - k)) for k in range(levels + 1)]
        self.const = nn.Parameter(torch.randn(1, channels[0], 4, 4))
        self.first = StyleLayer(channels[0], channels[0], w_dim)
        self.blocks = nn.ModuleList(
            nn.ModuleList([StyleLayer(channels[k], channels[k + 1], w_dim),
                           StyleLayer(channels[k + 1], channels[k + 1], w_dim)])
            for k in range(levels))
        self.rgbs = nn.ModuleList(ToRGB(c, w_dim) for c in channels)

    def map(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        w = self.mapping(z)
        if self.training:  # the running mean of w, for truncation
            with torch.no_grad():
                self.w_avg.lerp_(w.detach().float().mean(0), 0.005)
        elif truncation != 1.0:
            w = self.w_avg + truncation * (w - self.w_avg)
        return w

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images for z; at generation (eval mode) w pulled toward the average w by psi =
        `truncation` (1: none)."""
        w = self.map(z, truncation)
        x = self.first(self.const.expand(len(z), -1, -1, -1), w)
        rgb = self.rgbs[0](x, w)
        for (up, same), to_rgb in zip(self.blocks, self.rgbs[1:], strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = same(up(x, w), w)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + \
                to_rgb(x, w)
        return rgb


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


class ResidualDiscriminator(nn.Module):
    """RGB -> residual downsampling blocks to 4 x 4 -> minibatch standard deviation ->
    conv -> linear -> one logit."""

    def __init__(self, *, width: int = 64, size: int = 64, max_channels: int = 256,
                 group: int = 4):
        super().__init__()
        levels = doublings(size)
        channels = [min(max_channels, width * 2 ** k) for k in range(levels + 1)]
        self.stem = nn.Conv2d(3, channels[0], 1)
        self.blocks = nn.Sequential(*(ResBlock(channels[k], channels[k + 1])
                                      for k in range(levels)))
        self.group = group
        self.conv = nn.Conv2d(channels[-1] + 1, channels[-1], 3, padding=1)
        self.fc = nn.Linear(channels[-1] * 16, channels[-1])
        self.out = nn.Linear(channels[-1], 1)

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group, b)
        while b % g:
            g -= 1
        y = x.view(g, -1, c, h, w).float()
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (B / g,)
        y = y.to(x.dtype).repeat(g)[:, None, None, None].expand(b, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.leaky_relu(self.stem(x), 0.2))
        x = F.leaky_relu(self.conv(self.minibatch_std(x)), 0.2)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        return self.out(x).view(len(x))


def weight_layers(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight of every convolution and linear layer, in order (for per-layer norms)."""
    return [(name, m.weight) for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | EqualLinear)]


@ARCHS.register("dcgan")
def dcgan(cfg, size: int) -> tuple[nn.Module, nn.Module]:
    return (DCGANGenerator(z_dim=cfg.z_dim, width=cfg.g_width, size=size),
            DCGANDiscriminator(width=cfg.d_width, size=size, norm=cfg.d_norm))


@ARCHS.register("style")
def style(cfg, size: int) -> tuple[nn.Module, nn.Module]:
    return (StyleGenerator(z_dim=cfg.z_dim, w_dim=cfg.w_dim, mapping=cfg.mapping_layers,
                           width=cfg.g_width, size=size, max_channels=cfg.max_channels),
            ResidualDiscriminator(width=cfg.d_width, size=size, max_channels=cfg.max_channels))
