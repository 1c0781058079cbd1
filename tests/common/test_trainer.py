import csv

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.core.errors import UserError
from common.engine.optim import OptimConfig, SchedConfig
from common.engine.trainer import Callback, Objective, Trainer, TrainerConfig


class Regression(Objective):
    def forward(self, model, batch):
        return model(batch[0]).squeeze(-1)

    def loss(self, output, batch):
        return nn.functional.mse_loss(output, batch[1])

    def metrics(self, outputs, targets, dataset=None):
        return {"mse": torch.mean((outputs - targets) ** 2).item()}


def data(n=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.05 * torch.randn(n, generator=gen)
    return TensorDataset(x, y)


def model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def cfg(**kw):
    base = dict(epochs=3, batch_size=32, seed=0, device="cpu", print_every_evals=10**6)
    return TrainerConfig(**{**base, **kw})


def test_learns_and_writes_run_files(tmp_path):
    trainer = Trainer(model(), Regression(), cfg(epochs=30),
                      optim=OptimConfig(name="adam", lr=1e-2),
                      sched=SchedConfig(name="cosine", warmup_steps=5), run_dir=tmp_path)
    before = trainer.evaluate(data(200, seed=1))["mse"]
    state = trainer.fit(data(), data(200, seed=1))
    after = trainer.evaluate(data(200, seed=1))["mse"]
    assert before > 5 and after < 0.1 * before
    assert state.step == 30 * 10 and state.epoch == 30
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 30 and list(rows[0]) == ["epoch", "step", "lr", "train_loss",
                                                  "grad_norm", "valid_loss", "valid_mse"]
    assert float(rows[-1]["valid_mse"]) == pytest.approx(state.history[-1]["valid_mse"])
    # steps.csv: every update's loss, lr and gradient norm; metrics.csv has their epoch means
    steps = list(csv.DictReader(open(tmp_path / "steps.csv")))
    assert [int(r["step"]) for r in steps] == list(range(1, 301))
    assert list(steps[0]) == ["step", "epoch", "lr", "loss", "grad_norm"]
    assert float(steps[0]["lr"]) == pytest.approx(1e-2 / 5)  # warmup: update 1 of 5
    for epoch in (0, 29):
        part = steps[10 * epoch:10 * epoch + 10]
        assert float(rows[epoch]["grad_norm"]) == pytest.approx(
            sum(float(r["grad_norm"]) for r in part) / 10, rel=1e-9)
        assert float(rows[epoch]["train_loss"]) == pytest.approx(
            sum(float(r["loss"]) for r in part[:-1]) * 32 / 300
            + float(part[-1]["loss"]) * 12 / 300, rel=1e-9)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_the_trainer_flushes_denormals_on_the_cpu():
    tiny = torch.tensor([1e-323], dtype=torch.float64)   # a denormal double
    try:
        for flush, expected in ((False, 1e-323), (True, 0.0)):
            torch.set_flush_denormal(False)
            Trainer(model(), Regression(), cfg(flush_denormal=flush))
            assert (tiny * 1.0).item() == expected
    finally:
        torch.set_flush_denormal(False)


def test_gradient_accumulation_equals_the_big_batch():
    runs = []
    for batch, accum in ((128, 1), (32, 4), (64, 2)):
        trainer = Trainer(model(), Regression(), cfg(batch_size=batch, accum_steps=accum),
                          optim=OptimConfig(name="sgd", lr=0.05, momentum=0.9))
        trainer.fit(data(300))  # 300 = 128 + 128 + 44: the last group is short
        assert trainer.state.step == 3 * 3
        runs.append(trainer.model.state_dict())
    for other in runs[1:]:
        for key, value in runs[0].items():
            assert torch.allclose(value, other[key], atol=1e-6), key


def test_a_compiled_training_model_trains_the_same_weights():
    """trainer.compile wraps the model that trains in torch.compile ("eager": capture only, the
    same arithmetic); checkpoints and evaluation keep the plain module."""
    plain = Trainer(model(), Regression(), cfg(epochs=2), optim=OptimConfig(name="sgd", lr=0.05))
    plain.fit(data(200))
    compiled = Trainer(model(), Regression(), cfg(epochs=2, compile=True, compile_backend="eager"),
                       optim=OptimConfig(name="sgd", lr=0.05))
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit(data(200))
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(value, compiled.model.state_dict()[key], atol=1e-6), key
    assert not any(k.startswith("_orig_mod") for k in compiled.model.state_dict())


def test_gradient_clipping_bounds_the_update():
    trainer = Trainer(model(), Regression(), cfg(epochs=1, batch_size=300, clip_grad_norm=0.01),
                      optim=OptimConfig(name="sgd", lr=1.0, momentum=0.0))
    before = torch.cat([p.detach().clone().flatten() for p in trainer.model.parameters()])
    trainer.fit(data(300))
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert 0.009 < torch.linalg.norm(after - before).item() <= 0.01 + 1e-6


def test_early_stopping_and_best_tracking():
    trainer = Trainer(model(), Regression(), cfg(epochs=50, patience=3),
                      optim=OptimConfig(name="sgd", lr=0.0))
    state = trainer.fit(data(), data(100, seed=2))
    assert state.stopped and len(state.history) == 4 and state.best_step == 10
    assert trainer.best_model_state is not None


def test_eval_every_steps_callbacks_and_unknown_monitor():
    calls = {"step": 0, "eval": 0, "epoch": 0, "start": 0, "end": 0}

    class Count(Callback):
        def on_fit_start(self, trainer): calls["start"] += 1
        def on_step_end(self, trainer): calls["step"] += 1
        def on_evaluate(self, trainer, metrics, outputs):
            calls["eval"] += 1
            seen.append(outputs)
        def on_epoch_end(self, trainer): calls["epoch"] += 1
        def on_fit_end(self, trainer): calls["end"] += 1

    seen = []
    trainer = Trainer(model(), Regression(), cfg(epochs=2, eval_every_steps=4),
                      callbacks=[Count()])
    valid = data(64, seed=3)
    state = trainer.fit(data(), valid)
    assert [row["step"] for row in state.history] == [4, 8, 12, 16, 20]
    assert calls == {"step": 20, "eval": 5, "epoch": 2, "start": 1, "end": 1}
    # each evaluation hands its callbacks the validation predictions it scored: the last
    # one is what the final weights predict, and its MSE is the logged valid_loss
    assert torch.equal(seen[-1], trainer.predict(valid))
    mse = ((seen[-1] - valid.tensors[1]) ** 2).mean().item()
    assert mse == pytest.approx(state.history[-1]["valid_loss"], rel=1e-5)
    with pytest.raises(UserError, match="trainer.monitor='valid_acc'"):
        Trainer(model(), Regression(), cfg(monitor="valid_acc")).fit(data(), data(64))


def test_evaluate_weights_uneven_batches_and_predict_keeps_order():
    trainer = Trainer(model(), Regression(), cfg(batch_size=64))
    ds = data(100)
    outputs = trainer.predict(TensorDataset(ds.tensors[0]))
    assert outputs.shape == (100,)
    expected = torch.mean((outputs - ds.tensors[1]) ** 2).item()
    assert trainer.evaluate(ds)["loss"] == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        assert torch.allclose(outputs, trainer.model(ds.tensors[0]).squeeze(-1))


def test_drop_last_only_when_asked():
    kept = Trainer(model(), Regression(), cfg(epochs=1, batch_size=128))
    kept.fit(data(300))
    dropped = Trainer(model(), Regression(), cfg(epochs=1, batch_size=128, drop_last=True))
    dropped.fit(data(300))
    assert (kept.state.step, dropped.state.step) == (3, 2)


def test_worker_processes_give_the_same_run():
    runs = []
    for workers in (0, 2):
        trainer = Trainer(model(), Regression(), cfg(epochs=2, num_workers=workers))
        trainer.fit(data(), data(64, seed=4))
        runs.append(trainer.model.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key


def test_task_callbacks_run_and_ema_model_must_name_a_model():
    calls = []

    class EpochCounter(Callback):
        def on_epoch_end(self, trainer):
            calls.append(trainer.state.epoch)

    class WithCallbacks(Regression):
        def callbacks(self):
            return [EpochCounter()]

    Trainer(model(), WithCallbacks(), cfg(epochs=2)).fit(data())
    assert calls == [1, 2]
    with pytest.raises(UserError, match="ema_model='G' names no model"):
        Trainer(model(), Regression(), cfg(ema=True, ema_model="G"))


class ManualRegression(Regression):
    """The default step written out as a task's own (manual optimization), honouring update."""

    automatic_optimization = False

    def training_step(self, trainer, batch, *, update):
        _, _, loss = trainer.forward(batch, train=True)
        trainer.backward(loss, "main", count=len(batch[0]))
        if update:
            trainer.step("main")
        return loss


class EagerRegression(ManualRegression):
    """A manual step that ignores `update`: it steps on every micro-batch."""

    def training_step(self, trainer, batch, *, update):
        _, _, loss = trainer.forward(batch, train=True)
        trainer.backward(loss, "main", count=len(batch[0]))
        trainer.step("main")
        return loss


def test_a_manual_step_accumulates_like_the_big_batch():
    """Manual optimization, 2 micro-batches of 8 per update, ends with the weights of plain
    SGD on batches of 16 (computed by hand, no engine)."""
    x, y = data(64).tensors
    trainer = Trainer(model(), ManualRegression(), cfg(epochs=1, batch_size=8, accum_steps=2,
                                                        log_grad_norm=False),
                      optim=OptimConfig(name="sgd", lr=0.05, momentum=0.0))
    trainer.fit(TensorDataset(x, y))
    reference = model()
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05)
    from common.data.loading import EpochBatchSampler

    order = [i for b in EpochBatchSampler(64, 8, shuffle=True, seed=0) for i in b]
    for start in range(0, 64, 16):
        rows = torch.tensor(order[start:start + 16])
        sgd.zero_grad()
        nn.functional.mse_loss(reference(x[rows]).squeeze(-1), y[rows]).backward()
        sgd.step()
    for got, want in zip(trainer.model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert trainer.state.step == 4


def test_a_manual_step_that_ignores_update_is_refused():
    with pytest.raises(UserError, match="stepped optimizer 'main' on a micro-batch"):
        Trainer(model(), EagerRegression(), cfg(epochs=1, batch_size=8, accum_steps=2)
                ).fit(data(64))
    # without accumulation every micro-batch is an update: allowed
    Trainer(model(), EagerRegression(), cfg(epochs=1, batch_size=8)).fit(data(64))


def test_a_task_that_cannot_accumulate_refuses_accum_steps():
    class Eager(EagerRegression):
        accumulates = False

    with pytest.raises(UserError, match=r"trainer.accum_steps=2: .*cannot accumulate"):
        Trainer(model(), Eager(), cfg(accum_steps=2))


def test_a_non_finite_loss_stops_the_run_naming_its_update_and_keeps_earlier_checkpoints(
        tmp_path):
    """NaN targets from the start: the run stops with one line naming update 1 (epoch 1) at
    its first evaluation, before any checkpoint holds NaN weights. NaN targets from epoch 2
    on (10 updates an epoch): update 11 (epoch 2), and epoch 1's last.pt is kept, finite."""
    for from_epoch in (1, 2):
        x, y = data().tensors
        y = y.clone()
        if from_epoch == 1:
            y[:] = float("nan")
        run = tmp_path / f"from{from_epoch}"
        trainer = Trainer(model(), Regression(), cfg(), optim=OptimConfig(name="sgd", lr=1e-2),
                          sched=SchedConfig(), run_dir=run)

        class PoisonLater(Callback):
            def __init__(self, targets):
                self.targets = targets

            def on_epoch_end(self, trainer):
                self.targets[:] = float("nan")

        if from_epoch == 2:
            trainer.callbacks.append(PoisonLater(y))
        update = 1 + 10 * (from_epoch - 1)
        with pytest.raises(UserError, match=rf"not finite \(NaN or inf\) at update {update} "
                           rf"\(epoch {from_epoch}\)"):
            trainer.fit(TensorDataset(x, y), data(100, seed=1))
        last = run / "checkpoints" / "last.pt"
        assert last.exists() == (from_epoch == 2)
        if last.exists():
            kept = torch.load(last, weights_only=False)
            assert kept["trainer"]["step"] == 10
            assert all(torch.isfinite(v).all() for v in kept["model"].values())
