"""A toy WGAN-GP on the engine, the shape HW6 takes: two named models (G and D) in one
checkpoint, two optimizers, the task's own training step (n_critic discriminator updates per
generator update, a gradient penalty), an EMA of G, no labels, and a metric computed from
generated samples (MMD to held-out real points) as the monitored one.

It learns, resumes bit-identical after a kill mid-epoch, and trains under torchrun with
identical G and D on both ranks after every update."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.core.config import load_config
from common.core.io import atomic_write
from common.engine.models import build_mlp
from common.engine.optim import OptimizerSpec
from common.engine.task import Task
from common.experiments.pipeline import fit_split, make_trainer

RING = 8           # modes on a circle of radius 2


def write_ring(dest: Path, n: int = 2000, std: float = 0.1) -> Path:
    rng = np.random.default_rng(0)
    mode = rng.integers(0, RING, n)
    angle = 2 * math.pi * mode / RING
    points = np.stack([2 * np.cos(angle), 2 * np.sin(angle)], 1) + rng.normal(0, std, (n, 2))
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "points.npy", points.astype(np.float32))
    return dest


def mmd(x: torch.Tensor, y: torch.Tensor, scale: float = 0.5) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (biased estimate)."""
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * scale ** 2)).mean()
    x, y = x.double(), y.double()
    return float(k(x, x) + k(y, y) - 2 * k(x, y))


class LatentCodes(TensorDataset):
    """Fixed latent codes to generate from, with the real points they are compared with."""

    def __init__(self, z: torch.Tensor, reference: torch.Tensor | None = None):
        super().__init__(z)
        self.reference = reference


@dataclass
class GanModelConfig:
    latent: int = 8
    width: int = 64
    n_critic: int = 2          # discriminator updates per generator update
    gp_weight: float = 0.1


class ToyGanTask(Task):
    name = "toygan"
    model_config = GanModelConfig
    output_kind = "samples"    # not fusable: ensembles refuse it
    automatic_optimization = False  # D and G, each stepped by training_step
    submission_name = "samples.csv"

    def load_train(self, data_dir):
        return torch.from_numpy(np.load(Path(data_dir) / "points.npy"))

    def load_test(self, data_dir):
        return 256             # how many samples to generate

    def codes(self, n: int, salt: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(salt)
        return torch.randn(n, self.config["model"].latent, generator=gen)

    def make_datasets(self, points, train_idx, valid_idx):
        valid = LatentCodes(self.codes(512, 1), points[valid_idx]) if len(valid_idx) else None
        return TensorDataset(points[train_idx]), valid

    def make_test_dataset(self, n):
        return LatentCodes(self.codes(n, 2))

    def build_model(self) -> nn.Module:
        cfg = self.config["model"]
        return nn.ModuleDict({
            "G": build_mlp(cfg.latent, [cfg.width, cfg.width], 2),
            "D": build_mlp(2, [cfg.width, cfg.width], 1, activation="leaky_relu")})

    # --- the engine's hooks ------------------------------------------------------------------
    def configure_optimizers(self, model, optim, sched):
        return {name: OptimizerSpec(list(model[name].parameters()), optim, sched)
                for name in ("D", "G")}

    def gradient_penalty(self, d: nn.Module, real, fake) -> torch.Tensor:
        alpha = torch.rand(len(real), 1, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean()

    def training_step(self, trainer, batch, *, update):
        cfg = self.config["model"]
        g, d = trainer.model["G"], trainer.model["D"]
        real = batch[0]
        with trainer.autocast():
            fake = g(torch.randn(len(real), cfg.latent, device=real.device)).detach()
            loss_d = d(fake).mean() - d(real).mean() + \
                cfg.gp_weight * self.gradient_penalty(d, real, fake)
        trainer.backward(loss_d, "D")
        trainer.step("D")
        losses = {"loss_d": loss_d.detach()}
        if trainer.state.step % cfg.n_critic == cfg.n_critic - 1:
            with trainer.autocast():
                loss_g = -d(g(torch.randn(len(real), cfg.latent, device=real.device))).mean()
            trainer.backward(loss_g, "G")
            trainer.step("G")
            losses["loss_g"] = loss_g.detach()
        return losses

    def predict_step(self, model, batch):
        return model["G"](batch[0])

    def validation_step(self, model, batch):
        return self.predict_step(model, batch), None, None   # no labels, no loss

    def metrics(self, samples, targets, dataset=None):
        return {"mmd": mmd(samples, dataset.reference)}

    def write_submission(self, n, samples, path):
        with atomic_write(path) as fh:
            np.savetxt(fh, samples.numpy(), delimiter=",", header="x,y", comments="")
        return path

    @classmethod
    def write_demo_data(cls, dest):
        return write_ring(Path(dest))


SETTINGS = ["trainer.epochs=12", "trainer.batch_size=100", "optim.lr=2e-3",
            "optim.betas=[0.5,0.9]", "trainer.monitor=\"valid_mmd\"", "trainer.mode=\"min\"",
            "trainer.ema=true", "trainer.ema_model=\"G\"", "trainer.ema_decay=0.9",
            "trainer.device=\"cpu\"", "trainer.print_every_evals=1000", "trainer.threads=1"]


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    return write_ring(tmp_path_factory.mktemp("ring"))


def config_for(ring, *extra):
    return load_config(ToyGanTask.schema(), None, [*SETTINGS, f'data.dir="{ring}"', *extra])


def test_the_gan_learns_the_mixture(ring):
    task = ToyGanTask(config_for(ring))
    points = task.load_train(ring)
    train_idx, valid_idx = task.split(points)
    _, valid = task.make_datasets(points, train_idx, valid_idx)
    torch.manual_seed(task.config["trainer"].seed)
    before = make_trainer(task, task.build_model(), None).evaluate(valid)   # untrained
    trainer = fit_split(task, points, train_idx, valid_idx)
    after = trainer.evaluate(valid)
    assert set(after) == {"mmd"}                                 # no valid_loss without labels
    assert after["mmd"] < 0.25 * before["mmd"], (before, after)
    history = trainer.state.history
    assert {"train_loss_d", "train_loss_g", "grad_norm_D", "grad_norm_G", "lr_D",
            "lr_G"} <= set(history[-1])
    # EMA follows G only: the evaluated G is the average, D is the trained one
    assert not torch.equal(trainer.eval_model["G"][0].weight, trainer.model["G"][0].weight)
    assert trainer.eval_model["D"] is trainer.model["D"]
    assert trainer.state.best == min(row["valid_mmd"] for row in history)


@pytest.mark.slow
def test_a_killed_gan_run_resumes_bit_identical(ring, tmp_path):
    from tests.common.test_resume import kill_and_resume

    overrides = [*SETTINGS, f'data.dir="{ring}"', "trainer.epochs=4",
                 "trainer.ckpt_every_steps=7"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # killed mid-epoch 2 (16 updates an epoch), resumed from update 21
    a, b = kill_and_resume("tests.common.test_toy_gan:ToyGanTask", None, overrides, tmp_path,
                           23, 21)
    assert a["trainer"]["step"] == b["trainer"]["step"] == 64
    assert {k.split(".")[0] for k in a["model"]} == {"G", "D"}
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
    assert set(a["optimizers"]) == {"G", "D"}
    for name in ("G", "D"):
        for i, value in a["optimizers"][name]["state"].items():
            assert torch.equal(value["exp_avg_sq"], b["optimizers"][name]["state"][i]
                               ["exp_avg_sq"])
    for name in ("metrics.csv", "steps.csv", "samples.csv"):
        assert (straight / name).read_text() == (killed / name).read_text(), name


@pytest.mark.slow
def test_the_gan_under_torchrun_keeps_both_ranks_identical(ring, tmp_path):
    from tests.common.test_distributed import run_child

    log = tmp_path / "log"
    res = run_child(tmp_path / "child.py", task="tests.common.test_toy_gan:ToyGanTask",
                    run=tmp_path / "run", log=log, parts=("G", "D"),
                    overrides=[*SETTINGS, f'data.dir="{ring}"', "trainer.epochs=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [(log / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    # 1600 training points, 800 per rank, batches of 100: 8 updates per epoch
    assert len(ranks[0]) == 16 and ranks[0] == ranks[1]
    g_hashes = [line.split()[1] for line in ranks[0]]
    # n_critic = 2: G changes on updates 2, 4, ..., 16 only; D on every update
    assert len(set(g_hashes)) == 9 and all(g_hashes[i] == g_hashes[i + 1]
                                           for i in range(1, 15, 2))
    assert len({line.split()[2] for line in ranks[0]}) == 16
    assert os.path.getsize(tmp_path / "run" / "samples.csv") > 0
