"""Fréchet distances between sets of images: features from torchvision's InceptionV3 with
weights from a local file (the real FID's network), or from a fixed, seeded random
convolutional network that stands in for it in tests and on the demo (a *proxy* FID: it ranks
generators the same way on one data set, its values are on another scale). The distance is
computed in float64 with a symmetric matrix square root (eigh), which stays real and stable
for the singular covariances of small sets. Optional: the anime-face detection rate (AFD)
with an OpenCV cascade."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.core.errors import UserError
from common.data.images import signed_pixels

INCEPTION_HINT = ("torchvision's ImageNet InceptionV3 weights, inception_v3_google-0cc3c7bd.pth "
                  "from download.pytorch.org/models/")


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                     cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2), in float64 (the
    trace term is tr((C1 C2)^1/2), computed from symmetric matrices so it stays real)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    vals, vecs = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)
    return max(value, 0.0)  # a distance: below 0 only by rounding (singular covariances)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


class ProxyFeatures(nn.Module):
    """A fixed random network (seeded, never trained): four stride-2 convolutions with ReLU on
    64 x 64 inputs, each level's channel means and the last level's 2 x 2 map concatenated
    (480 + 1024 features: colour and texture statistics and the coarse layout, small enough
    for a covariance that costs under a second). Not Inception: a proxy, labelled so
    wherever it is reported."""

    name, version = "proxy", 2

    def __init__(self, seed: int = 0, size: int = 64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths, layers, c = (32, 64, 128, 256), [], 3
        for w in widths:
            conv = nn.Conv2d(c, w, 3, 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen)
                                  * (2 / (9 * c)) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            c = w
        self.layers, self.size = nn.ModuleList(layers), size
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> (B, 1504) features."""
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        parts = []
        for conv in self.layers:
            x = F.relu(conv(x))
            parts.append(x.mean((2, 3)))
        parts.append(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return torch.cat(parts, 1)


class InceptionFeatures(nn.Module):
    """torchvision's InceptionV3 up to its 2048-d average pool, inputs resized to 299 x 299
    in [-1, 1] (the scaling its ImageNet weights were trained with)."""

    name = "inception"

    def __init__(self, path: str | Path):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{path}: InceptionV3 weights not found; download {INCEPTION_HINT} "
                            "and pass its path (model.inception or --inception)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file
            raise UserError(f"{path}: not a PyTorch state dict ({type(exc).__name__}); "
                            f"download {INCEPTION_HINT} again") from None
        net = inception_v3(weights=None, aux_logits=True, init_weights=False,
                           transform_input=False)
        try:
            net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict)
                                else state)
        except (RuntimeError, AttributeError) as exc:
            raise UserError(f"{path}: does not fit torchvision's InceptionV3 "
                            f"({str(exc).splitlines()[0][:120]}); use {INCEPTION_HINT}") from None
        net.fc, net.AuxLogits = nn.Identity(), None
        net.aux_logits = False
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always in eval mode (BatchNorm statistics fixed)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)


def feature_network(inception: str = "", device: torch.device | str = "cpu") -> nn.Module:
    """Built without touching torch's global RNG (layer constructors draw from it), so that a
    network first built mid-training changes nothing for an exact resume."""
    with torch.random.fork_rng(devices=[]):
        net = InceptionFeatures(inception) if inception else ProxyFeatures()
    return net.to(device).eval()


@torch.no_grad()
def image_features(net: nn.Module, images, *, batch: int = 100,
                   device: torch.device | str | None = None) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (N, 3, H, W) (tensor or array)."""
    device = device or next(net.parameters()).device
    images = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    out = []
    for start in range(0, len(images), batch):
        x = signed_pixels(images[start:start + batch].to(device))
        out.append(net(x).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1))


def cached_statistics(net: nn.Module, images, key: str, cache_dir: str | Path | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The feature mean and covariance of `images`, kept under cache_dir by key."""
    path = None
    if cache_dir:
        version = getattr(net, "version", 1)  # a changed network never reads old statistics
        digest = hashlib.sha1(f"{key}-{net.name}-{version}".encode()).hexdigest()[:16]
        path = Path(cache_dir).expanduser() / f"fid-{net.name}-{digest}.npz"
        if path.is_file():
            with np.load(path) as saved:
                return saved["mu"], saved["cov"]
    mu, cov = statistics(image_features(net, images))
    if path is not None:
        from common.core.io import atomic_write

        with atomic_write(path, "wb") as fh:
            np.savez(fh, mu=mu, cov=cov)
    return mu, cov


def detection_rate(images: np.ndarray, cascade: str | Path) -> float:
    """The share of images (N, H, W, 3) uint8 in which OpenCV's cascade finds a face (AFD)."""
    try:
        import cv2
    except ImportError:
        raise UserError("--cascade needs OpenCV: pip install opencv-python-headless") from None
    cascade = Path(cascade).expanduser()
    detector = cv2.CascadeClassifier(str(cascade))
    if not cascade.is_file() or detector.empty():
        raise UserError(f"{cascade}: not an OpenCV cascade file (lbpcascade_animeface.xml)")
    found = 0
    for image in images:
        gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        found += len(detector.detectMultiScale(gray, 1.1, 5, minSize=(16, 16))) > 0
    return found / max(len(images), 1)
