"""Splits, samplers and loaders. Data order is a pure function of (seed, epoch), so a resumed
run continues the same order from any batch without replaying anything."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from common.core.errors import UserError
from common.core.runtime import Salt, derive_seed, seed_worker


def split_train_valid(n: int, valid_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random split of range(n); each part is returned sorted."""
    if not 0.0 <= valid_ratio < 1.0:
        raise UserError(f"data.valid_ratio={valid_ratio} must be in [0, 1)")
    n_valid = int(n * valid_ratio)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def share_size(n: int, rank: int, world: int, even: bool) -> int:
    """How many of n units (items or batches) rank takes: ceil(n / world) when `even`
    (padded by repetition), else its contiguous block."""
    per_rank = math.ceil(n / world)
    if even or world == 1:
        return per_rank
    return max(0, min(n, (rank + 1) * per_rank) - rank * per_rank)


def rank_share(units, rank: int, world: int, even: bool):
    """This rank's share of a sequence (a tensor or a list) all ranks hold in the same order:
    with `even`, DistributedSampler's scheme (padded by repeating the first units, every
    world-th unit from `rank`); without it the rank-th contiguous block, nothing repeated, so
    the shares joined in rank order give the sequence back."""
    if world == 1:
        return units
    n, per_rank = len(units), math.ceil(len(units) / world)
    if not even:
        return units[rank * per_rank:(rank + 1) * per_rank]
    repeats = math.ceil(per_rank * world / max(n, 1))
    padded = units.repeat(repeats) if isinstance(units, torch.Tensor) else units * repeats
    return padded[:per_rank * world][rank::world]


def split_like_random_split(n: int, valid_ratio: float, seed: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The split torch.utils.data.random_split([int((1 - r) n), rest]) draws right after
    torch.manual_seed(seed), as course samples do; each part sorted."""
    if not 0.0 <= valid_ratio < 1.0:
        raise UserError(f"data.valid_ratio={valid_ratio} must be in [0, 1)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = int((1.0 - valid_ratio) * n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


class EpochBatchSampler(Sampler):
    """Batches of indices; the permutation depends only on (seed, epoch). `start_batch` skips the
    batches a resumed run has already consumed, without touching the data.

    Under torchrun (world > 1) each rank takes its share of the same permutation: with `even`
    (training) every rank gets ceil(n / world) items, padded by repeating the first ones as
    DistributedSampler does, rank r taking every world-th; without it (evaluation) rank r takes
    the r-th contiguous block and nothing is repeated, so gathering in rank order restores the
    dataset order with every item once."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, as_tensor: bool = False, rank: int = 0,
                 world: int = 1, even: bool = True):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.as_tensor = drop_last, as_tensor
        self.rank, self.world, self.even = rank, world, even
        self.epoch, self.start_batch = 0, 0
        self.local_n = share_size(n, rank, world, even)

    @property
    def in_order(self) -> bool:
        """Whether the batches, joined in rank order, list the items in dataset order."""
        return not self.shuffle

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def num_batches(self) -> int:
        if self.drop_last:
            return self.local_n // self.batch_size
        return math.ceil(self.local_n / self.batch_size)

    def batch_sizes(self) -> list[int]:
        sizes = [self.batch_size] * self.num_batches()
        if sizes and not self.drop_last and self.local_n % self.batch_size:
            sizes[-1] = self.local_n % self.batch_size
        return sizes

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        return rank_share(order, self.rank, self.world, self.even)

    def __iter__(self):
        order = self._order()
        for b in range(self.start_batch, self.num_batches()):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield chunk if self.as_tensor else chunk.tolist()


class LengthBatchSampler(Sampler):
    """Batches of items of similar length, within a budget of padded tokens (or frames)
    `max_tokens` = longest item x items, and/or at most `batch_size` items.

    The batches are packed once from the items sorted by length (ties in a seeded order), so
    their number never changes; each epoch only shuffles the order of the batches, a pure
    function of (seed, epoch), and `start_batch` skips what a resumed run consumed. Under
    torchrun, training (`even`) pads the batch list to a multiple of the world size and rank r
    takes every world-th batch; evaluation gives rank r the r-th contiguous block of batches,
    nothing repeated. An item longer than the budget forms a batch of its own. With
    sort=False the items are packed in their own order (in dataset order unless shuffled), and
    unshuffled batches then list the items in dataset order (`in_order`)."""

    def __init__(self, lengths, *, max_tokens: int = 0, batch_size: int = 0,
                 shuffle: bool, sort: bool = True, seed: int = 0, as_tensor: bool = False,
                 rank: int = 0, world: int = 1, even: bool = True):
        if max_tokens < 1 and batch_size < 1:
            raise UserError("a length-bucketed batch needs max_tokens or batch_size (>= 1)")
        lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
        self.shuffle, self.sort, self.seed, self.as_tensor = shuffle, sort, seed, as_tensor
        self.rank, self.world, self.even = rank, world, even
        self.epoch, self.start_batch = 0, 0
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)) \
            if shuffle else torch.arange(len(lengths))
        if sort:  # ties keep the seeded order
            order = order[torch.sort(lengths[order], stable=True).indices]
        self.batches = self._pack(order, lengths[order].tolist(), max_tokens, batch_size)

    @property
    def in_order(self) -> bool:
        """Whether the batches, joined in rank order, list the items in dataset order (else
        the trainer puts predictions back into dataset order)."""
        return not self.shuffle and not self.sort

    @staticmethod
    def _pack(order: torch.Tensor, sizes: list[int], max_tokens: int,
              batch_size: int) -> list[torch.Tensor]:
        batches, start, longest = [], 0, 0
        for i, size in enumerate(sizes):
            longest_with = max(longest, size)
            count = i - start + 1
            if count > 1 and ((max_tokens and longest_with * count > max_tokens)
                              or (batch_size and count > batch_size)):
                batches.append(order[start:i])
                start, longest_with = i, size
            longest = longest_with
        if start < len(sizes):
            batches.append(order[start:])
        return batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _mine(self) -> list[torch.Tensor]:
        batches = self.batches
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return rank_share(batches, self.rank, self.world, self.even)

    def num_batches(self) -> int:
        return share_size(len(self.batches), self.rank, self.world, self.even)

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)

    def __iter__(self):
        for chunk in self._mine()[self.start_batch:]:
            yield chunk if self.as_tensor else chunk.tolist()


def find_data_root(data_dir, folder: str, markers: tuple[str, ...], what: str) -> Path:
    """The folder holding any of `markers`: data_dir itself, data_dir/folder or (Kaggle's
    nesting) data_dir/folder/folder. A zip lying there gives an 'unzip it first' hint."""
    data_dir = Path(data_dir)
    for cand in (data_dir, data_dir / folder, data_dir / folder / folder):
        if any((cand / m).exists() for m in markers):
            return cand
    zipped = sorted(data_dir.glob("*.zip"))
    hint = f"unzip {zipped[0]} first" if zipped else f"point --data at the unzipped {folder}/"
    raise UserError(f"{data_dir}: no {what} here, in {folder}/ or in {folder}/{folder}/; {hint}")


def find_root_or_child(data_dir, markers: tuple[str, ...], missing: str,
                       archives: str = "*.zip", hint: str = "") -> Path:
    """The folder holding any of `markers`: data_dir itself or one of its subfolders (as an
    archive unpacks). Else one error: `missing`, then "extract <archive> first" when an
    archive lies there, or `hint`."""
    data_dir = Path(data_dir)
    for cand in (data_dir, *sorted(p for p in data_dir.glob("*") if p.is_dir())):
        if any((cand / m).is_file() for m in markers):
            return cand
    packed = sorted(data_dir.glob(archives))
    advice = f"extract {packed[0]} first" if packed else hint
    raise UserError(f"{data_dir}: {missing}; {advice}")


def supports_batched_indexing(dataset: Dataset) -> bool:
    """Tensor-backed datasets are indexed with a whole batch of indices at once."""
    return isinstance(dataset, TensorDataset) or getattr(dataset, "batched_indexing", False)


WORKER_SHARING = "file_system"


def use_worker_sharing() -> None:
    """Workers hand batches over by shared-memory file names rather than passed descriptors:
    one descriptor per tensor per batch costs more than gathering the batch itself from a
    memory-mapped store (HW4, 2 workers: about 2x the items per second;
    scripts/bench/hw4_pipeline.py). torch's shm manager removes the files of crashed runs."""
    if WORKER_SHARING in torch.multiprocessing.get_all_sharing_strategies():
        torch.multiprocessing.set_sharing_strategy(WORKER_SHARING)


def build_loader(dataset: Dataset, batch_size: int = 0, *, shuffle: bool = False, seed: int = 0,
                 epoch: int = 0, start_batch: int = 0, drop_last: bool = False,
                 num_workers: int = 0, pin_memory: bool = False, collate_fn=None,
                 rank: int = 0, world: int = 1, even: bool = True,
                 batch_sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch); tensor datasets skip collation.
    rank/world/even: this process's share under torchrun (see EpochBatchSampler). A given
    `batch_sampler` (e.g. LengthBatchSampler, built with as_tensor for batched datasets)
    replaces the fixed-size one."""
    batched = supports_batched_indexing(dataset)
    if num_workers:
        use_worker_sharing()
    sampler = batch_sampler or EpochBatchSampler(
        len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
        as_tensor=batched, rank=rank, world=world, even=even)
    sampler.set_epoch(epoch, start_batch)
    common = dict(num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=seed_worker,
                  generator=torch.Generator().manual_seed(derive_seed(seed, epoch, Salt.LOADER)),
                  persistent_workers=False)
    if batched:
        return DataLoader(dataset, sampler=sampler, batch_size=None, **common)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, **common)


def as_float_tensor(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))
