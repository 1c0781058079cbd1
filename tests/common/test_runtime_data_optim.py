import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from common.core.errors import UserError
from common.core.runtime import (
    amp_dtype,
    choose_device,
    get_rng_state,
    seed_everything,
    set_rng_state,
)
from common.data.loading import (
    EpochBatchSampler,
    LengthBatchSampler,
    build_loader,
    split_train_valid,
)
from common.engine.optim import (
    OptimConfig,
    SchedConfig,
    build_optimizer,
    fusable,
    lr_factor,
    param_groups,
    set_lr,
)


def test_seed_and_rng_state_round_trip():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(3)
    assert (random.random(), np.random.rand()) == first[:2] and torch.equal(torch.rand(2),
                                                                            first[2])
    state = get_rng_state()
    ahead = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    assert (random.random(), np.random.rand()) == ahead[:2]
    assert torch.equal(torch.rand(3), ahead[2])


def test_device_choice_and_amp_off_on_cpu():
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError):
        choose_device("toaster")
    assert amp_dtype(torch.device("cpu"), True) is None
    assert amp_dtype(torch.device("cpu"), True, "fp16") is None      # autocast is CUDA only
    cuda = torch.device("cuda")                                      # no GPU needed to choose
    assert amp_dtype(cuda, True, "fp16") is torch.float16
    assert amp_dtype(cuda, True, "bf16") is torch.bfloat16
    assert amp_dtype(cuda, False, "fp16") is None


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_train_valid(2699, 0.2, 5201314)
    assert len(va) == 539 and len(tr) == 2160
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(2699))
    tr2, va2 = split_train_valid(2699, 0.2, 5201314)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(va, split_train_valid(2699, 0.2, 1)[1])
    with pytest.raises(UserError):
        split_train_valid(10, 1.5, 0)


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    sampler = EpochBatchSampler(103, 10, shuffle=True, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    assert [len(b) for b in full] == sampler.batch_sizes() == [10] * 10 + [3]
    assert sorted(i for b in full for i in b) == list(range(103))
    sampler.set_epoch(2, start_batch=4)
    assert list(sampler) == full[4:] and len(sampler) == 7
    sampler.set_epoch(3)
    assert list(sampler) != full
    assert EpochBatchSampler(103, 10, shuffle=False, drop_last=True).num_batches() == 10


def test_tensor_loader_yields_whole_batches_without_collate():
    x = torch.arange(50.0).unsqueeze(1)
    loader = build_loader(TensorDataset(x, x.squeeze(1)), 16, shuffle=True, seed=1, epoch=0)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    assert torch.equal(batches[0][0].squeeze(1), batches[0][1])
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
    again = torch.cat([b[1] for b in build_loader(TensorDataset(x, x.squeeze(1)), 16,
                                                  shuffle=True, seed=1, epoch=1)])
    assert not torch.equal(again, seen)          # a new order each epoch


def test_schedules_are_pure_functions_of_the_step():
    kw = dict(total_steps=100, steps_per_epoch=10)
    assert lr_factor(0, SchedConfig(name="constant"), **kw) == 1.0
    warm = SchedConfig(name="cosine", warmup_steps=10)
    assert lr_factor(0, warm, **kw) == pytest.approx(0.1)
    assert lr_factor(9, warm, **kw) == pytest.approx(1.0)
    assert lr_factor(10, warm, **kw) == pytest.approx(1.0)
    assert lr_factor(55, warm, **kw) == pytest.approx(0.5)
    assert lr_factor(100, warm, **kw) == pytest.approx(0.0)
    step = SchedConfig(name="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(s, step, **kw) for s in (0, 19, 20, 45)] == [1, 1, 0.5, 0.25]
    inv = SchedConfig(name="inverse_sqrt", warmup_steps=4)
    assert lr_factor(3, inv, **kw) == 1.0 and lr_factor(15, inv, **kw) == pytest.approx(0.5)
    assert lr_factor(5, SchedConfig(name="cosine", warmup_epochs=1.0), **kw) == \
        pytest.approx(0.6)
    assert math.isclose(lr_factor(50, SchedConfig(name="cosine", min_lr_ratio=0.2), **kw),
                        0.6)
    linear = SchedConfig(name="linear", warmup_steps=10, min_lr_ratio=0.1)
    assert [lr_factor(s, linear, **kw) for s in (4, 10, 55, 100, 150)] == pytest.approx(
        [0.5, 1.0, 0.55, 0.1, 0.1])
    # an unknown name is refused once, where sched.name's choices are declared
    from common.core.config import build_config

    with pytest.raises(UserError, match="sched.name: 'wiggly' is not a choice"):
        build_config({"sched": SchedConfig}, {"sched": {"name": "wiggly"}})
    assert build_config({"sched": SchedConfig}, {"sched": {"name": "Cosine"}})["sched"].name \
        == "cosine"   # spelled as declared


def test_optimizers_by_name():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=0.1, momentum=0.9,
                                              weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sgd.param_groups[0]["lr"] == 0.1 and sgd.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(build_optimizer(params, OptimConfig(name="adam")), torch.optim.Adam)
    adamw = build_optimizer(params, OptimConfig(name="AdamW", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05
    assert adamw.param_groups[0]["lr"] == OptimConfig().lr == 1e-3
    with pytest.raises(UserError, match="optim.name"):
        build_optimizer(params, OptimConfig(name="lion"))


def test_fused_adam_where_the_parameters_allow_it_and_the_same_updates():
    def run(fused: bool, groups: bool = False):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        params = param_groups(model, OptimConfig(no_decay_bias_norm=True)) if groups \
            else model.parameters()                                      # a generator too
        opt = build_optimizer(params, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1,
                                                  fused=fused))
        x = torch.randn(32, 6)
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return opt, torch.cat([p.detach().flatten() for p in model.parameters()])

    fused, after = run(True)
    plain, reference = run(False)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    assert torch.allclose(after, reference, atol=1e-6)       # the same updates, one kernel
    grouped, _ = run(True, groups=True)
    assert grouped.defaults["fused"] is True and len(grouped.param_groups) == 2
    ints = [torch.nn.Parameter(torch.zeros(2)), torch.zeros(2, dtype=torch.int64)]
    assert not fusable(ints) and not fusable([]) and fusable(ints[:1])
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not fusable(meta)


def test_rank_shares_cover_the_data_like_distributed_sampler():
    from common.data.loading import EpochBatchSampler

    n, world = 23, 3
    train = [EpochBatchSampler(n, 4, shuffle=True, seed=5, rank=r, world=world, as_tensor=True)
             for r in range(world)]
    for s in train:
        s.set_epoch(2)
    shares = [torch.cat(list(s)) for s in train]
    assert all(len(x) == 8 for x in shares)  # ceil(23 / 3) each, one item repeated
    assert set(torch.cat(shares).tolist()) == set(range(n))
    # the permutation one process would draw for that epoch; rank r takes every world-th item
    alone = EpochBatchSampler(n, 100, shuffle=True, seed=5, as_tensor=True)
    alone.set_epoch(2)
    order = next(iter(alone))
    padded = torch.cat([order, order[:1]])
    for r in range(world):
        assert torch.equal(shares[r], padded[r::world])
    # evaluation: contiguous blocks, nothing repeated, rank order restores the order
    evals = [EpochBatchSampler(n, 3, shuffle=False, rank=r, world=world, even=False,
                               as_tensor=True) for r in range(world)]
    assert torch.equal(torch.cat([torch.cat(list(s)) for s in evals]), torch.arange(n))
    assert [s.local_n for s in evals] == [8, 8, 7]
    tiny = [EpochBatchSampler(1, 3, shuffle=False, rank=r, world=2, even=False) for r in (0, 1)]
    assert [len(s) for s in tiny] == [1, 0]


def test_parameter_groups_decay_and_layer_scales():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    plain = param_groups(model, OptimConfig(weight_decay=0.1))
    assert len(plain) == 1 and len(plain[0]["params"]) == 6
    groups = param_groups(model, OptimConfig(weight_decay=0.1, no_decay_bias_norm=True))
    by_decay = {g["weight_decay"]: g["params"] for g in groups}
    assert {id(p) for p in by_decay[0.1]} == {id(model[0].weight), id(model[2].weight)}
    assert len(by_decay[0.0]) == 4  # two biases, LayerNorm weight and bias
    layers = {"0": 0, "1": 1, "2": None}  # None: the head, full learning rate
    groups = param_groups(model, OptimConfig(layer_decay=0.5),
                          layer_id=lambda name: layers[name.split(".")[0]], num_layers=2)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(model[0].weight)] == 0.25 and scale_of[id(model[1].weight)] == 0.5
    assert scale_of[id(model[2].bias)] == 1.0
    opt = build_optimizer(groups, OptimConfig(name="sgd", lr=0.2))
    assert set_lr(opt, 0.2, 0.5) == 0.1
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.025, 0.05, 0.1])
    with pytest.raises(UserError, match="numbers"):
        param_groups(model, OptimConfig(layer_decay=0.5))


def test_length_batches_respect_the_budget_and_resume_mid_epoch():
    lengths = np.random.default_rng(0).integers(1, 50, 300)
    sampler = LengthBatchSampler(lengths, max_tokens=200, shuffle=True, seed=3)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) * lengths[b].max() <= 200 for b in batches)
    assert all(lengths[b].max() - lengths[b].min() <= 5 for b in batches)  # buckets
    sampler.set_epoch(1, start_batch=5)
    assert list(sampler) == batches[5:]
    sampler.set_epoch(2)
    other = list(sampler)
    assert other != batches and sorted(map(tuple, other)) == sorted(map(tuple, batches))
    capped = LengthBatchSampler(lengths, batch_size=7, shuffle=False)
    assert max(len(b) for b in capped) == 7
    # torchrun: equal counts when training, contiguous blocks covering everything in eval
    shares = [LengthBatchSampler(lengths, max_tokens=200, shuffle=True, seed=3, rank=r,
                                 world=3) for r in range(3)]
    assert len({s.num_batches() for s in shares}) == 1
    assert set().union(*[set(i for b in s for i in b) for s in shares]) == set(range(300))
    evals = [LengthBatchSampler(lengths, max_tokens=200, shuffle=False, rank=r, world=3,
                                even=False) for r in range(3)]
    joined = [i for s in evals for b in s for i in b]
    assert sorted(joined) == list(range(300))
    with pytest.raises(UserError):
        LengthBatchSampler(lengths, shuffle=True)
