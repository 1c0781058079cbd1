"""Behaviour checked against independent references (a hand-computed value, a closed form, a
plain PyTorch call), not the code against itself: each test here fails under a small,
plausible bug that the rest of the suite let through (span fusion, best/early-stopping
direction and min_delta, predict.ckpt = "last", EMA weights in last.pt, clipping under
accumulation, HW5 beam cache and label smoothing, HW4 margin, HW6 penalty point, n_critic and
EMA decay, HW7 answers with spaces)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.core.config import load_config
from common.engine.checkpoint import load_checkpoint
from common.engine.fusion import fuse
from common.engine.optim import OptimConfig
from common.engine.trainer import Trainer, TrainerConfig
from common.experiments.pipeline import make_trainer, train_run
from tests.common.test_trainer import Regression, data, model
from tests.toy import BlobsTask, write_blobs


# --------------------------------------------------------------------------- span fusion
def test_a_span_one_member_proposed_gets_its_weighted_probability_from_that_member_only():
    """fuse: p(span) = sum over members of w_m p_m(span), a member that did not propose the
    span giving it 0 (the documented rule), by hand for three spans and weights 0.25 / 0.75."""
    a = {(0, 2): math.log(0.6), (3, 5): math.log(0.4)}
    b = {(6, 9): math.log(0.9), (0, 2): math.log(0.1)}
    (fused,) = fuse([[a], [b]], kind="spans", weights=[1, 3])
    expected = {(0, 2): 0.25 * 0.6 + 0.75 * 0.1, (3, 5): 0.25 * 0.4, (6, 9): 0.75 * 0.9}
    assert set(fused) == set(expected)
    for span, p in expected.items():
        assert math.exp(fused[span]) == pytest.approx(p, rel=1e-12)


# --------------------------------------------------------------------------- best, early stop
def cfg(**kw):
    return TrainerConfig(**{**dict(epochs=3, batch_size=32, seed=0, device="cpu",
                                   print_every_evals=10**6, log_grad_norm=False), **kw})


def expected_stop(values: list[float], *, mode: str, min_delta: float, patience: int):
    """The documented rule, by hand: an evaluation improves when it beats the best so far by
    more than min_delta in the direction of mode; training stops after `patience`
    evaluations without improvement. Returns (best, index of best, evaluations run)."""
    best, at, bad = None, -1, 0
    for i, v in enumerate(values):
        better = best is None or (v < best - min_delta if mode == "min" else
                                  v > best + min_delta)
        if better:
            best, at, bad = v, i, 0
        else:
            bad += 1
            if patience and bad >= patience:
                return best, at, i + 1
    return best, at, len(values)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_and_early_stopping_follow_a_metric_that_moves(mode):
    """Plain SGD whose validation MSE falls quickly, then creeps: with min_delta the run
    stops where the rule by hand says, best.pt holds the best evaluation; in mode max (a
    metric to maximise: here the MSE itself, so the first evaluation is best) likewise."""
    objective = Regression()
    trainer = Trainer(model(), objective,
                      cfg(epochs=40, patience=3, min_delta=0.02, mode=mode,
                          monitor="valid_mse", batch_size=64),
                      optim=OptimConfig(name="sgd", lr=0.01, momentum=0.0))
    valid = data(100, seed=2)
    state = trainer.fit(data(), valid)
    values = [row["valid_mse"] for row in state.history]
    best, at, runs = expected_stop(values, mode=mode, min_delta=0.02, patience=3)
    assert len(values) == runs and state.stopped == (runs < 40)
    assert state.best == best and state.best_step == state.history[at]["step"]
    assert 3 < runs < 40 if mode == "min" else runs == 4       # the rule really stops it
    trainer.load_best()
    assert objective.metrics(trainer.predict(valid), valid.tensors[1])["mse"] == \
        pytest.approx(best, rel=1e-6)


# --------------------------------------------------------------------------- which weights
def blobs_config(blobs, *sets):
    return load_config(BlobsTask.schema(), None, [
        f'data.dir="{blobs}"', 'trainer.device="cpu"', "trainer.epochs=6",
        "trainer.batch_size=64", "optim.lr=0.05", "trainer.print_every_evals=1000",
        "data.valid_ratio=0.3", *sets])


def plain_logits(weights: dict, x: torch.Tensor) -> torch.Tensor:
    """The blobs MLP (Linear, ReLU, Linear) by hand from a state dict."""
    h = torch.relu(x @ weights["0.weight"].T + weights["0.bias"])
    return h @ weights["2.weight"].T + weights["2.bias"]


def test_predict_ckpt_last_at_train_time_predicts_with_the_final_weights(tmp_path):
    """Monitoring valid_loss with mode max makes an early (worse) evaluation the best, so
    best.pt and the final weights differ; predict.ckpt = "last" must write the final weights'
    test outputs (checked against a plain forward of last.pt's weights)."""
    blobs = write_blobs(tmp_path / "blobs")
    config = blobs_config(blobs, 'predict.ckpt="last"', 'trainer.mode="max"')
    result = train_run(BlobsTask, config, tmp_path / "run")
    history = result["trainer"].state.history
    assert result["trainer"].state.best_step != history[-1]["step"]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    x = torch.from_numpy(np.load(blobs / "test.npz")["x"])
    saved = torch.load(tmp_path / "run" / "test_outputs.pt", weights_only=True)["outputs"]
    assert torch.allclose(saved, plain_logits(last, x), atol=1e-5)
    assert not torch.allclose(saved, plain_logits(best, x), atol=1e-3)


def test_predict_from_a_last_pt_uses_its_ema_weights(tmp_path):
    """trainer.ema: the EMA is computed by hand from the raw weights after every update
    (the first update copies, then ema = d ema + (1 - d) w) and `predict --ckpt last` must
    predict with it."""
    from common.engine.trainer import Callback
    from common.experiments.finished import predict_run

    raw = []

    class Record(Callback):
        def on_step_end(self, trainer):
            raw.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    blobs = write_blobs(tmp_path / "blobs")
    decay = 0.8
    config = blobs_config(blobs, "trainer.ema=true", f"trainer.ema_decay={decay}")
    train_run(BlobsTask, config, tmp_path / "run", callbacks=[Record()])
    ema = dict(raw[0])
    for weights in raw[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
    predict_run(BlobsTask, tmp_path / "run", ckpt="last", out_dir=tmp_path / "again")
    saved = torch.load(tmp_path / "again" / "test_outputs.pt", weights_only=True)["outputs"]
    x = torch.from_numpy(np.load(blobs / "test.npz")["x"])
    assert torch.allclose(saved, plain_logits(ema, x), atol=1e-5)
    assert not torch.allclose(saved, plain_logits(raw[-1], x), atol=1e-3)


# --------------------------------------------------------------------------- clipping
def test_clipping_under_accumulation_clips_the_big_batchs_gradient():
    """2 micro-batches of 8 with clip_grad_norm 0.1 end with the weights of plain SGD on
    batches of 16 whose mean gradient is clipped to 0.1 (by hand): clipping comes after the
    micro-batches are normalised into the big batch's mean."""
    from common.data.loading import EpochBatchSampler

    x, y = data(64).tensors
    clip = 0.1
    trainer = Trainer(model(), Regression(), cfg(epochs=1, batch_size=8, accum_steps=2,
                                                 clip_grad_norm=clip),
                      optim=OptimConfig(name="sgd", lr=0.05, momentum=0.0))
    trainer.fit(TensorDataset(x, y))
    reference = model()
    params = list(reference.parameters())
    order = [i for b in EpochBatchSampler(64, 8, shuffle=True, seed=0) for i in b]
    norms = []
    for start in range(0, 64, 16):
        rows = torch.tensor(order[start:start + 16])
        loss = nn.functional.mse_loss(reference(x[rows]).squeeze(-1), y[rows])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        norms.append(float(norm))
        scale = min(1.0, clip / (float(norm) + 1e-6))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.05 * scale * g
    assert min(norms) > clip                    # clipping was active at every update
    for got, want in zip(trainer.model.parameters(), params, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


# --------------------------------------------------------------------------- HW5
BOS, EOS, PAD = 2, 3, 0


class Bigram(nn.Module):
    """A decoder by hand whose next token depends on the last two target tokens: logits =
    A[last] + B[the one before]; its cache keeps "the one before" per row, so a beam search
    that does not reorder the cache mixes the histories of different beams."""

    def __init__(self, vocab: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(vocab, vocab, generator=g) * 2.5
        self.b = torch.randn(vocab, vocab, generator=g) * 2.5
        self.a[:, EOS] -= 1.0                   # long enough hypotheses to reorder

    def encode(self, src):
        return src.float()[:, :, None], (src != PAD)[:, None, None, :]

    def new_cache(self):
        return [{"prev": {}}]

    def decode(self, tgt, memory, mask, *, cache=None, start=0):
        if cache is None:
            before = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], 1)
        else:
            part = cache[0]["prev"]
            before = torch.cat([part.get("token", torch.full_like(tgt[:, :1], BOS)),
                                tgt[:, :-1]], 1)
            part["token"] = tgt[:, -1:]
        return self.a[tgt] + self.b[before]


def test_beam_search_with_the_cache_equals_recomputing_on_a_model_with_memory(monkeypatch):
    """Cached beam search equals beam search that recomputes every prefix on Bigram; with the
    cache never reordered it would not (checked, so the model does depend on history)."""
    from hw.hw5_translate import decode

    src = torch.tensor([[5, 6, 7, 4, 1, 1, 5, 6]] * 3 + [[4, 5, PAD, PAD, PAD, PAD, PAD, PAD]])
    kw = dict(beam=4, bos=BOS, eos=EOS, pad=PAD, a=1.0, b=2)
    models = [Bigram(seed=s) for s in range(6)]
    plain = [decode.beam_search(m, src, cached=False, **kw) for m in models]
    assert [decode.beam_search(m, src, cached=True, **kw) for m in models] == plain
    monkeypatch.setattr(decode, "reorder_cache", lambda cache, index: None)
    assert [decode.beam_search(m, src, cached=True, **kw) for m in models] != plain


def test_translation_loss_is_label_smoothed_cross_entropy_without_padding():
    """TranslationTask.loss against the formula by hand: per real target token (1 - e)
    (-log p_y) + e mean_k(-log p_k), averaged over the tokens that are not padding."""
    from hw.hw5_translate.task import TranslationTask

    eps = 0.1
    task = TranslationTask(load_config(TranslationTask.schema(), None,
                                       [f"model.label_smoothing={eps}"]))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    target = torch.randint(4, 11, (3, 5), generator=g)
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    logp = logits.log_softmax(-1)
    per_token = (1 - eps) * -logp.gather(-1, target[..., None])[..., 0] + eps * -logp.mean(-1)
    real = target != PAD
    expected = per_token[real].mean()
    assert task.loss(logits, {"tgt_out": target}) == pytest.approx(float(expected), rel=1e-5)


# --------------------------------------------------------------------------- HW4
@pytest.mark.parametrize("head", ["amsoftmax", "aamsoftmax"])
def test_speaker_loss_applies_the_margin_to_the_target_class(head):
    """SpeakerTask.loss with a margin head equals cross-entropy of the margin-adjusted logits
    by hand: s (cos - m) (additive) or s cos(theta + m) (angular) at the target, s cos
    elsewhere; soft (mixup) targets get no margin."""
    from hw.hw4_speaker.task import SpeakerTask

    s, m = 30.0, 0.2
    task = SpeakerTask(load_config(SpeakerTask.schema(), None, [
        f'model.head="{head}"', f"model.scale={s}", f"model.margin={m}"]))
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(6, 5, generator=g) * 1.6 - 0.8
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    adjusted = cos.clone()
    for i, t in enumerate(target.tolist()):
        adjusted[i, t] = cos[i, t] - m if head == "amsoftmax" else \
            math.cos(math.acos(float(cos[i, t])) + m)
    expected = -(s * adjusted).log_softmax(-1).gather(1, target[:, None]).mean()
    got = task.loss(s * cos, (None, None, target))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got) > float(-(s * cos).log_softmax(-1).gather(1, target[:, None]).mean())


# --------------------------------------------------------------------------- HW6
class ConstantG(nn.Module):
    """A generator by hand: every z gives the same image, a parameter starting at `value`."""

    def __init__(self, size: int, value: float):
        super().__init__()
        self.image = nn.Parameter(torch.full((3, size, size), value))

    def forward(self, z, truncation=1.0):
        return self.image.expand(len(z), -1, -1, -1) + 0 * z[:, :1, None, None]


class SquareD(nn.Module):
    """A critic by hand: D(x) = w |x|^2 / 2, whose input gradient is w x (norm w |x|)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.w * x.flatten(1).pow(2).sum(1) / 2


def gan_task(*sets):
    from hw.hw6_gan.task import GanTask

    return GanTask(load_config(GanTask.schema(), None, [
        "data.image_size=8", 'model.loss="wgan"', "model.gp_weight=10", "model.z_dim=4",
        "model.log_d_layers=false", 'trainer.device="cpu"', "trainer.batch_size=4",
        "trainer.print_every_evals=1000", "optim.lr=0.01", *sets]))


def test_the_gradient_penalty_is_taken_at_interpolates_between_real_and_fake():
    """Reals all 0.6, fakes all -0.2 (per pixel): D's input gradient norm at a point x is
    |x|, so at x = a real + (1 - a) fake it is |0.8 a - 0.2| sqrt(3 * 64); the logged norm
    must be the mean of that over the alphas drawn (reseeded), never the reals' 0.6 sqrt(192)."""
    task = gan_task()
    model = nn.ModuleDict({"G": ConstantG(8, -0.2), "D": SquareD()})
    trainer = make_trainer(task, model, None)
    real_pixels = round((0.6 + 1) * 127.5)                   # uint8 of 0.6 (to 1/255)
    batch = [torch.full((4, 3, 8, 8), real_pixels, dtype=torch.uint8)]
    real = real_pixels / 127.5 - 1.0
    torch.manual_seed(7)
    losses = task.training_step(trainer, batch, update=True)
    torch.manual_seed(7)
    torch.randn(4, 4)                                        # the z drawn before the penalty
    alpha = torch.rand(4, 1, 1, 1)
    norms = (alpha * real + (1 - alpha) * -0.2).abs().flatten() * math.sqrt(192)
    assert float(losses["gp_grad_norm"]) == pytest.approx(float(norms.mean()), rel=1e-5)
    assert float(losses["gp"]) == pytest.approx(float(((norms - 1) ** 2).mean()), rel=1e-5)
    assert float(losses["gp_grad_norm"]) < 0.99 * real * math.sqrt(192)


def test_g_steps_once_per_n_critic_d_steps_and_its_ema_has_the_configured_decay():
    """12 updates with n_critic 3: D's optimizer stepped 12 times, G's 4 (counted by Adam's
    own step counters); the EMA of G, by hand over G's weights after each G step (first
    copies, then 0.7 ema + 0.3 w), equals the engine's."""
    task = gan_task("model.n_critic=3", "trainer.ema=true", 'trainer.ema_model="G"',
                    "trainer.ema_decay=0.7", "trainer.epochs=1", 'model.loss="hinge"',
                    "model.gp_weight=0")
    model = nn.ModuleDict({"G": ConstantG(8, -0.2), "D": SquareD()})
    trainer = make_trainer(task, model, None)
    seen = []
    real_step = trainer.step

    def step(name="main"):
        real_step(name)
        if name == "G":
            seen.append(trainer.model["G"].image.detach().clone())

    trainer.step = step
    faces = torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator()
                          .manual_seed(0))
    trainer.fit(TensorDataset(faces))
    opt = trainer.stepper.optimizers
    assert int(opt["D"].state[model["D"].w]["step"]) == 12
    assert int(opt["G"].state[model["G"].image]["step"]) == 4 == len(seen)
    ema = seen[0]
    for w in seen[1:]:
        ema = 0.7 * ema + 0.3 * w
    assert torch.allclose(trainer.ema.module.image, ema, atol=1e-6)
    assert not torch.allclose(ema, seen[-1])


# --------------------------------------------------------------------------- HW7
def test_an_answer_with_spaces_and_latin_words_comes_back_exactly():
    """A question whose answer is "New York City 2022" (spaces, Latin words, digits): given
    the gold start and end as the model's peaks, the best-span rule returns the text cut
    from the paragraph itself, spaces included."""
    from hw.hw7_qa import windows as win
    from hw.hw7_qa.data import QASet
    from hw.hw7_qa.task import QATask

    paragraph = "馬拉松於 New York City 2022 年舉行，共有五萬人參加。"
    answer = "New York City 2022"
    start = paragraph.index(answer)
    qa = QASet(None, [paragraph], [0], np.array([0]), ["馬拉松在哪裡舉行？"], [answer],
               np.array([start]), np.array([start + len(answer)]))
    task = QATask(load_config(QATask.schema(), None, [
        'model.name=""', 'model.postprocess="best"', "data.max_length=64"]))
    task.load_state_dict({"vocab": win.char_vocab([paragraph, qa.questions[0]])})
    windows = task.labelled_dataset(qa, [0])
    assert windows.recoverable.all()
    batch = windows[np.arange(len(windows))]
    start_logits = torch.full(batch["input_ids"].shape, -10.0)
    end_logits = start_logits.clone()
    for w, (s, e) in enumerate(windows.targets.tolist()):
        if e > 0:
            start_logits[w, s], end_logits[w, e] = 10.0, 10.0
    spans = task.finalize(task.predict_output((start_logits, end_logits), batch), windows)
    assert win.answers(spans, qa, [0]) == [answer]
