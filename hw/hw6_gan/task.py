"""HW6 task: an anime-face GAN on the engine's task-defined step. Named models G and D with
their own optimizers, the GAN (the course's BCE), WGAN (weight clipping) and hinge losses,
WGAN-GP's penalty on interpolates and R1 on reals, n_critic, differentiable augmentation, EMA
of G (trainer.ema_model = "G"); faces served from the uint8 image cache; every evaluation
generates from fixed latent codes, scores FID (or the proxy FID) against cached real
statistics and saves a 10 x 10 grid; the submission is JudgeBoi's archive of 1000 JPEGs."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from common.core.config import option
from common.core.errors import UserError
from common.core.io import atomic_write, building_folder, files_key, write_bytes_atomic
from common.core.runtime import choose_device, derive_seed
from common.data.images import ImageDataset, load_images, pixels_from_signed, signed_pixels
from common.engine.optim import OptimizerSpec
from common.engine.sections import DataConfig
from common.engine.task import Task
from common.engine.trainer import Callback
from hw.hw6_gan import data as faces
from hw.hw6_gan import fid
from hw.hw6_gan.augment import augment, parse_policy
from hw.hw6_gan.model import ARCHS, NORMS, doublings, weight_layers

ARCHIVE_LIMIT = 2_000_000      # JudgeBoi: under 2 MB
SUBMISSION_IMAGES = 1000
QUALITIES = (95, 90, 85, 80, 75, 70, 65, 60, 55, 50, 45, 40, 35, 30)
FIXED_CODES, TEST_CODES = 601, 602   # seed salts of the validation and test latent codes


@dataclass
class GanDataConfig(DataConfig):
    valid_ratio: float = option(0.0, min=0.0, below=1.0)  # unused: FID is against the faces
    image_size: int = option(64, min=8)     # the course resizes 96 -> 64
    cache_dir: str = ".cache/hw6"           # decoded faces and real FID statistics; "": none
    skip_bad_images: bool = False
    limit: int = option(0, min=0)           # the first N faces only (0: all)
    fid_real: int = option(10000, min=0)    # real faces in the reference statistics (0: all)


@dataclass
class GanModelConfig:
    arch: str = option("dcgan", choices=ARCHS.names())
    z_dim: int = option(100, min=1)
    g_width: int = option(64, min=1)        # dcgan: the last block's channels; style: base
    d_width: int = option(64, min=1)
    d_norm: str = option("batch", choices=NORMS)   # dcgan D: batch (GAN, WGAN), instance or
                                                   # none (WGAN-GP: no BatchNorm in the critic)
    w_dim: int = option(256, min=1)         # style: the mapping network's width and depth
    mapping_layers: int = option(8, min=1)
    max_channels: int = option(256, min=1)
    loss: str = option("gan", choices=("gan", "wgan", "hinge"))
    gp_weight: float = option(0.0, min=0.0)     # WGAN-GP penalty on interpolates (10)
    r1_gamma: float = option(0.0, min=0.0)      # R1 penalty on reals: gamma / 2 x E|grad|^2
    clip_weights: float = option(0.0, min=0.0)  # WGAN: clip D's weights to [-c, c] (0.01)
    n_critic: int = option(1, min=1)            # D updates per G update
    d_lr_mul: float = option(1.0, min=0.0)      # D's learning rate x this (TTUR)
    augment: str = ""                           # differentiable: flip,color,translation,cutout
    truncation: float = option(1.0, min=0.0, max=1.0)  # style: psi at generation
    fid_images: int = option(1000, min=2)       # generated images per evaluation
    inception: str = ""                         # InceptionV3 weights file: real FID too
    grid: int = option(100, min=0)              # images in each evaluation's grid (10 x 10)
    log_d_layers: bool = True                   # D's per-layer gradient norms in steps.csv


@dataclass(frozen=True)
class FaceSet:
    """The decoded training faces (N, S, S, 3) uint8 and the key naming them in caches."""

    array: np.ndarray
    key: str

    def __len__(self) -> int:
        return len(self.array)


class LatentCodes(TensorDataset):
    """Fixed latent codes: the validation set (with the real faces its images are scored
    against) and the test set (the 1000 submission images)."""

    def __init__(self, codes: torch.Tensor, real: FaceSet | None = None):
        super().__init__(codes)
        self.real = real


def save_grid(images: torch.Tensor, path: Path) -> None:
    """uint8 (N, 3, H, W) as a square grid PNG."""
    from PIL import Image
    from torchvision.utils import make_grid

    side = max(1, int(len(images) ** 0.5))
    grid = make_grid(images[:side * side], nrow=side, padding=2, pad_value=255)
    with atomic_write(path, "wb") as fh:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(fh, format="PNG")


def write_archive(images: torch.Tensor, path: Path, folder: Path | None = None,
                  limit: int = ARCHIVE_LIMIT) -> tuple[int, int]:
    """1.jpg ... N.jpg in a .tgz with no enclosing folder, under `limit` bytes: JPEG quality
    lowered step by step until it fits; the archive read back and checked; the images also
    written to `folder`. Returns (quality, bytes)."""
    from PIL import Image

    arrays = images.permute(0, 2, 3, 1).numpy()
    for quality in QUALITIES:
        jpegs = []
        for array in arrays:
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="JPEG", quality=quality)
            jpegs.append(buf.getvalue())
        packed = io.BytesIO()
        with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:   # same images, same bytes
            for i, jpeg in enumerate(jpegs, 1):
                info = tarfile.TarInfo(f"{i}.jpg")
                info.size, info.mtime, info.mode = len(jpeg), 0, 0o644
                tar.addfile(info, io.BytesIO(jpeg))
        if len(packed.getvalue()) < limit:
            break
    else:
        raise UserError(f"{path}: {len(arrays)} images do not fit in {limit} bytes even at JPEG "
                        f"quality {QUALITIES[-1]}; generate smaller images (data.image_size)")
    check_archive(packed.getvalue(), len(arrays), arrays.shape[1:3], path)
    if folder is None:
        write_bytes_atomic(path, packed.getvalue())
        return quality, len(packed.getvalue())
    # the new images beside the old folder, then the archive, then the folder swapped in: a
    # write that fails (a full disk) leaves the old archive and images exactly as they were
    with building_folder(folder, replace=True) as tmp:
        for i, jpeg in enumerate(jpegs, 1):
            write_bytes_atomic(tmp / f"{i}.jpg", jpeg)
        write_bytes_atomic(path, packed.getvalue())
    return quality, len(packed.getvalue())


def check_archive(data: bytes, count: int, shape, path: Path) -> None:
    """Exactly 1.jpg ... count.jpg at the root, each a JPEG of `shape` (H, W) RGB."""
    from PIL import Image

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        if sorted(names) != sorted(f"{i}.jpg" for i in range(1, count + 1)):
            raise UserError(f"{path}: the archive does not hold exactly 1.jpg..{count}.jpg")
        for m in members:
            with Image.open(tar.extractfile(m)) as im:
                if im.format != "JPEG" or im.mode != "RGB" or im.size[::-1] != tuple(shape):
                    raise UserError(f"{path}: {m.name} is not a {shape} RGB JPEG")


class GridCallback(Callback):
    """Each evaluation's first `grid` generated images as samples/step-<step>.png."""

    def __init__(self, grid: int):
        self.grid = grid

    def on_evaluate(self, trainer, metrics, images):
        if trainer.writes and images is not None and self.grid:
            save_grid(images[:self.grid],
                      trainer.run.path / "samples" / f"step-{trainer.state.step:09d}.png")


class GanTask(Task):
    name = "hw6"
    data_config = GanDataConfig
    model_config = GanModelConfig
    submission_name = "submission.tgz"
    output_kind = "images"
    automatic_optimization = False   # D and G, each with its own optimizer and step
    # D steps on every batch and G every n_critic of D's steps: one batch is one update
    accumulates = False

    def __init__(self, config):
        super().__init__(config)
        self._features: dict[str, nn.Module] = {}
        self._real: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.policy = parse_policy(config["model"].augment)
        doublings(config["data"].image_size)  # a size the networks cannot build: one line now

    # --- data ---------------------------------------------------------------------------
    def load_train(self, data_dir: Path) -> FaceSet:
        cfg = self.config["data"]
        files = faces.face_files(data_dir)
        files = files[:cfg.limit] if cfg.limit else files
        cached = load_images(files, cfg.image_size, cache_dir=cfg.cache_dir or None,
                             skip_bad=cfg.skip_bad_images, desc="decode faces")
        return FaceSet(cached.array, files_key(files, cfg.image_size))

    def load_test(self, data_dir: Path) -> LatentCodes:
        """The test set: the latent codes of the 1000 submission images (no files)."""
        return self.test_codes(SUBMISSION_IMAGES)

    def test_codes(self, n: int) -> LatentCodes:
        return LatentCodes(self.codes(n, TEST_CODES))

    def codes(self, n: int, salt: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.config["trainer"].seed, salt))
        return torch.randn(n, self.config["model"].z_dim, generator=gen)

    def split(self, faces: FaceSet):
        return np.arange(len(faces)), np.zeros(0, dtype=np.int64)

    def labelled_dataset(self, faces: FaceSet, idx):
        return ImageDataset(faces.array, idx)

    def make_datasets(self, faces: FaceSet, train_idx, valid_idx):
        return ImageDataset(faces.array, train_idx), \
            LatentCodes(self.codes(self.config["model"].fid_images, FIXED_CODES), real=faces)

    def make_test_dataset(self, codes: LatentCodes) -> LatentCodes:
        return codes

    # --- models and optimizers ------------------------------------------------------------
    def build_model(self) -> nn.Module:
        g, d = ARCHS.build(self.config["model"].arch, self.config["model"],
                           self.config["data"].image_size)
        return nn.ModuleDict({"G": g, "D": d})

    def configure_optimizers(self, model, optim, sched):
        return {"D": OptimizerSpec([{"params": list(model["D"].parameters()),
                                     "lr_scale": self.config["model"].d_lr_mul}], optim, sched),
                "G": OptimizerSpec(list(model["G"].parameters()), optim, sched)}

    def callbacks(self):
        return [GridCallback(self.config["model"].grid)]

    # --- one training step ----------------------------------------------------------------
    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        kind = self.config["model"].loss
        if kind == "gan":  # the course: mean of BCE(D(real), 1) and BCE(D(fake), 0)
            return (F.softplus(-real).mean() + F.softplus(fake).mean()) / 2
        if kind == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return fake.mean() - real.mean()                                  # wgan

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        kind = self.config["model"].loss
        return F.softplus(-fake).mean() if kind == "gan" else -fake.mean()

    def gradient_penalty(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """WGAN-GP: E(|grad D(x^)| - 1)^2 on random interpolates x^ (float32); also the
        norms themselves."""
        alpha = torch.rand(len(real), 1, 1, 1, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(augment(mixed, self.policy)).sum(), mixed,
                                      create_graph=True)
        norms = grad.flatten(1).norm(2, dim=1)
        return ((norms - 1) ** 2).mean(), norms.detach()

    def r1_penalty(self, d: nn.Module, real: torch.Tensor) -> torch.Tensor:
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(d(augment(real, self.policy)).sum(), real,
                                      create_graph=True)
        return grad.flatten(1).pow(2).sum(1).mean()

    def training_step(self, trainer, batch, *, update):
        cfg = self.config["model"]
        g, d = trainer.model["G"], trainer.model["D"]
        real = signed_pixels(batch[0])
        z = torch.randn(len(real), cfg.z_dim, device=real.device)
        with trainer.autocast():
            with torch.no_grad():
                fake = g(z)
            loss_d = self.d_loss(d(augment(real, self.policy)),
                                 d(augment(fake, self.policy)))
        losses = {"loss_d": loss_d.detach()}
        total = loss_d.float()
        if cfg.gp_weight > 0:  # penalties in float32, outside autocast
            gp, norms = self.gradient_penalty(d, real, fake.float())
            total = total + cfg.gp_weight * gp
            losses["gp"], losses["gp_grad_norm"] = gp.detach(), norms.mean()
        if cfg.r1_gamma > 0:
            r1 = self.r1_penalty(d, real)
            total = total + cfg.r1_gamma / 2 * r1
            losses["r1"] = r1.detach()
        trainer.backward(total, "D")
        if cfg.log_d_layers:
            losses.update(self.layer_norms(trainer, d))
        trainer.step("D")
        if cfg.clip_weights > 0:
            with torch.no_grad():
                for p in d.parameters():
                    p.clamp_(-cfg.clip_weights, cfg.clip_weights)
        if trainer.state.step % cfg.n_critic == cfg.n_critic - 1:
            z = torch.randn(len(real), cfg.z_dim, device=real.device)
            with trainer.autocast():
                loss_g = self.g_loss(d(augment(g(z), self.policy)))
            trainer.backward(loss_g, "G")
            trainer.step("G")
            losses["loss_g"] = loss_g.detach()
        return losses

    def layer_norms(self, trainer, d: nn.Module) -> dict[str, torch.Tensor]:
        """The gradient norm of each of D's weight layers (unscaled under fp16)."""
        scale = trainer.grad_scale("D")
        return {f"dgrad_{i}": p.grad.detach().float().norm() / scale
                for i, (_, p) in enumerate(weight_layers(d)) if p.grad is not None}

    def count(self, batch):
        return len(batch[0])

    # --- generation and scoring -----------------------------------------------------------
    def predict_step(self, model, batch):
        return pixels_from_signed(model["G"](batch[0], truncation=self.config["model"].truncation))

    def validation_step(self, model, batch):
        return pixels_from_signed(model["G"](batch[0])), None, None   # no labels, no loss

    def feature_net(self, kind: str = "proxy") -> nn.Module:
        """The proxy network, or InceptionV3 from model.inception, on the trainer's device."""
        if kind not in self._features:
            device = choose_device(self.config["trainer"].device)
            self._features[kind] = fid.feature_network(
                self.config["model"].inception if kind == "inception" else "", device)
        return self._features[kind]

    def real_statistics(self, net: nn.Module, faces: FaceSet) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the real faces' features (data.fid_real of them, a seeded
        choice), computed once and cached beside the image cache."""
        n = self.config["data"].fid_real or len(faces)
        key = f"{faces.key}-{n}"
        if (net.name, key) not in self._real:
            rows = np.sort(np.random.default_rng(0).permutation(len(faces))[:n])
            images = torch.from_numpy(np.ascontiguousarray(faces.array[rows])).permute(0, 3, 1, 2)
            self._real[net.name, key] = fid.cached_statistics(
                net, images, key, self.config["data"].cache_dir or None)
        return self._real[net.name, key]

    def metrics(self, images, targets, dataset: LatentCodes = None):
        """proxy_fid always; fid (InceptionV3) too when model.inception names the weights:
        against the real faces the validation codes carry."""
        if dataset is None or dataset.real is None:
            raise UserError("hw6: FID needs the real faces; score the validation codes "
                            "make_datasets returns")
        kinds = ("proxy", "inception") if self.config["model"].inception else ("proxy",)
        out = {}
        for kind in kinds:
            net = self.feature_net(kind)
            out["proxy_fid" if kind == "proxy" else "fid"] = fid.frechet_distance(
                *fid.statistics(fid.image_features(net, images)),
                *self.real_statistics(net, dataset.real))
        return out

    # --- submission -------------------------------------------------------------------------
    def write_submission(self, codes: LatentCodes, images: torch.Tensor, path: Path) -> Path:
        n = len(codes)
        if len(images) != n:
            raise UserError(f"{path}: {len(images)} images generated, {n} expected")
        quality, size = write_archive(images, Path(path), Path(path).parent / "images")
        from common.engine.runlog import say

        say(f"{path}: {n} JPEGs at quality {quality}, {size / 1e6:.2f} MB (JudgeBoi: under 2 MB)")
        return Path(path)

    @classmethod
    def write_demo_data(cls, dest: Path) -> Path:
        return faces.write_demo_data(Path(dest))

    @classmethod
    def demo_score(cls, submission: Path, data_dir: Path, config) -> dict[str, float] | None:
        """The proxy FID of the submitted images against the demo faces."""
        with tarfile.open(submission, "r:gz") as tar:
            from PIL import Image

            fake = np.stack([np.asarray(Image.open(tar.extractfile(m)).convert("RGB"))
                             for m in tar.getmembers()])
        size = fake.shape[1]
        real = load_images(faces.face_files(data_dir), size).array
        net = fid.feature_network("")
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # noqa: E731
        return {"proxy_fid": fid.frechet_distance(
            *fid.statistics(fid.image_features(net, to_tensor(fake))),
            *fid.statistics(fid.image_features(net, to_tensor(real))))}
