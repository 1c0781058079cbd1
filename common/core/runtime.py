"""Seeding, device choice, mixed precision and RNG state capture for exact resume."""

from __future__ import annotations

import contextlib
import enum
import os
import random

import numpy as np
import torch

from common.core.errors import UserError


class Salt(enum.IntEnum):
    """Named second parts of derive_seed, one per random stream, so no two streams collide."""

    LOADER = 1          # a DataLoader's generator (worker seeds) for (seed, epoch)
    RANK = 5051         # per-rank dropout and mixup under torchrun
    TTA = 7717          # test-time augmented view k


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_seeded(seed: int):
    """Run a block on torch's CPU generator seeded with `seed`, then put its state back, so
    per-item randomness (augmentation) is a pure function of the seed and costs microseconds."""
    gen = torch.default_generator
    state = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(state)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive python and numpy seeds from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. base seed and epoch)."""
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def hashed_uniform(seed: int, epoch: int, items: np.ndarray) -> np.ndarray:
    """One uniform number in [0, 1) per item, a pure function of (seed, epoch, item): a
    splitmix64 hash, vectorised: per-item randomness (crops) with no RNG state and no
    per-item generator, the same whichever batch or worker draws it."""
    with np.errstate(over="ignore"):
        z = (np.asarray(items, dtype=np.uint64) + np.uint64(derive_seed(seed, epoch) % 2**63)) \
            * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def choose_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is used as given."""
    if name == "auto":
        if torch.cuda.is_available():  # under torchrun: this process's GPU (LOCAL_RANK)
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda or "
                        "mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device asks for cuda but no CUDA device is available; use auto")
    return device


def set_cpu_threads(threads: int = 0) -> int:
    """Use the given thread count, or every core this process may run on (0)."""
    if threads <= 0:
        threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count())
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def flush_denormals() -> bool:
    """Treat denormal floats as zero in CPU arithmetic (process-wide; where the CPU supports
    it, x86 with SSE3). An update whose optimizer state holds them runs several times slower,
    and zero is as good a value at that scale. Returns whether it took effect."""
    return torch.set_flush_denormal(True)


def amp_dtype(device: torch.device, enabled: bool, prefer: str = "auto") -> torch.dtype | None:
    """The autocast dtype: `prefer` ("bf16" or "fp16"; "auto": bf16 where the CUDA device
    supports it, else fp16); None (no autocast) off CUDA or when AMP is off."""
    if not enabled or device.type != "cuda":
        return None
    if prefer == "auto":
        prefer = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.bfloat16 if prefer == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def get_rng_state() -> dict:
    """Every global RNG as plain values and tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {
            "name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
