"""HW3 networks, by model.arch: the course's 5-block CNN, our residual networks from
torchvision's blocks, or any torchvision classification model with random weights; all behind
a Normalize layer that carries the training images' channel statistics."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from common.core.errors import UserError
from common.core.registry import Registry

ARCHS = Registry("model.arch")


class Normalize(nn.Module):
    """uint8 (or 0..255 float, after mixup) images to normalised float; the statistics travel
    with the weights."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


@ARCHS.register("course_cnn")
def course_cnn(cfg, *, image_size: int, num_classes: int) -> nn.Sequential:
    """The course sample: five Conv3x3-BN-ReLU-MaxPool blocks (64, 128, 256, 512, 512) and a
    1024-512 MLP head; 12,833,803 parameters at 128x128."""
    layers, c_in = [], 3
    for c_out in (64, 128, 256, 512, 512):
        layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(2, 2, 0)]
        c_in = c_out
    side = image_size // 32
    if side < 1:
        raise UserError(f"data.image_size={image_size}: the course CNN needs at least 32")
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * side * side, 1024), nn.ReLU(),
                         nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, num_classes))


def make_stem(kind: str, width: int) -> nn.Sequential:
    if kind not in ("conv3", "conv3s2", "imagenet"):
        raise UserError(f"model.stem={kind!r}: choose conv3, conv3s2 or imagenet")
    if kind == "imagenet":
        return nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(nn.Conv2d(3, width, 3, 2 if kind == "conv3s2" else 1, 1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(inplace=True))


@ARCHS.register("resnet")
def residual_net(cfg, *, image_size: int, num_classes: int) -> nn.Sequential:
    """A ResNet of any width (model.widths) and depth (model.blocks) from torchvision's blocks:
    each stage after the first halves the resolution; the last BatchNorm of every block starts
    at zero."""
    widths, blocks, bottleneck = cfg.widths, cfg.blocks, cfg.bottleneck
    if not widths or len(widths) != len(blocks) or min(blocks) < 1:
        raise UserError("model.widths and model.blocks need one entry per stage, blocks >= 1")
    block = Bottleneck if bottleneck else BasicBlock
    layers = [make_stem(cfg.stem, widths[0])]
    c_in = widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            c_out = width * block.expansion
            down = None if stride == 1 and c_in == c_out else nn.Sequential(
                conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
            layers.append(block(c_in, width, stride, down))
            c_in = c_out
    for m in layers[1:]:
        nn.init.zeros_(m.bn3.weight if bottleneck else m.bn2.weight)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout),
                         nn.Linear(c_in, num_classes))


def torchvision_model(name: str, stem: str, num_classes: int) -> nn.Module:
    """A torchvision classification model by name with random weights; resnets get our stem."""
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise UserError(f"model.arch={name!r} is unknown; choose one of "
                        f"{', '.join(ARCHS.names())} or a torchvision model such as "
                        f"{', '.join(n for n in names if 'res' in n)}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if stem != "imagenet" and hasattr(model, "conv1") and hasattr(model, "maxpool"):
        model.conv1 = make_stem(stem, model.conv1.out_channels)[0]
        model.maxpool = nn.Identity()
    return model


def build_network(cfg, *, image_size: int, num_classes: int, mean: list[float],
                  std: list[float]) -> nn.Sequential:
    """Normalize, then model.arch: one of ARCHS, else a torchvision model by that name."""
    if cfg.arch in ARCHS.names():
        body = ARCHS.build(cfg.arch, cfg, image_size=image_size, num_classes=num_classes)
    else:
        body = torchvision_model(cfg.arch, cfg.stem, num_classes)
    return nn.Sequential(Normalize(mean, std), body)
