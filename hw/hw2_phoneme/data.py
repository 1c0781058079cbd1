"""LibriPhone files: split lists, frame labels and per-utterance (T, 39) MFCC tensors.

All frames of a split live in one (total_frames, 39) tensor with utterance offsets; context
windows (FrameWindows) and padded batches of whole utterances (Utterances) are built per batch
by index arithmetic, never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from common.core.errors import UserError
from common.core.io import read_text, write_csv_atomic
from common.data.loading import find_data_root
from common.engine.checkpoint import load_torch_file

N_CLASSES = 41
FEAT_DIM = 39
SPLIT_FILES = {"train": "train_split.txt", "test": "test_split.txt"}
LABEL_FILE = "train_labels.txt"
DEMO_ANSWERS = "demo_test_answers.csv"   # the demo test frames' classes, for `--demo` scores


def find_root(data_dir: Path) -> Path:
    """The folder holding train_split.txt: data_dir itself, libriphone/ or (Kaggle)
    libriphone/libriphone/."""
    return find_data_root(data_dir, "libriphone", tuple(SPLIT_FILES.values()),
                          "train_split.txt")


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing; the libriphone folder needs train_split.txt, "
                        "train_labels.txt, test_split.txt and feat/")
    ids = [line.strip() for line in read_text(path).splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise UserError(f"{path}: lists no utterances")
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: an utterance is listed twice")
    return ids


def read_labels(path: Path) -> dict[str, np.ndarray]:
    """`<utt> l1 l2 ... lT` per line; every label an integer in 0..40."""
    if not path.is_file():
        raise UserError(f"{path}: missing; it holds the frame labels of the training utterances")
    labels = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = np.array(parts[1:], dtype=np.int64)
        except ValueError:
            raise UserError(f"{path}: line {n} (utterance {parts[0]}): labels must be integers"
                            ) from None
        if values.size == 0 or values.min() < 0 or values.max() >= N_CLASSES:
            raise UserError(f"{path}: line {n} (utterance {parts[0]}): labels must lie in "
                            f"0..{N_CLASSES - 1} and there must be at least one")
        labels[parts[0]] = values
    return labels


def load_feature(path: Path, utt: str) -> torch.Tensor:
    feat = load_torch_file(path, missing=f"missing feature file for utterance {utt}",
                           unreadable=f"unreadable feature file for utterance {utt} "
                           "(truncated or not a tensor); download the data again")
    if not isinstance(feat, torch.Tensor) or feat.dim() != 2 or feat.shape[1] != FEAT_DIM \
            or not feat.is_floating_point() or feat.shape[0] == 0:
        what = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise UserError(f"{path}: utterance {utt} must be a (T, {FEAT_DIM}) float tensor, got "
                        f"{what}")
    finite = torch.isfinite(feat).all(1)
    if not finite.all():  # one NaN would make every loss NaN and every prediction class 0
        raise UserError(f"{path}: utterance {utt} frame {int((~finite).nonzero()[0])} holds "
                        "NaN or inf; download the data again or drop the utterance")
    return feat.float()


@dataclass
class Frames:
    """Every frame of a split: features (N, 39), utterance offsets (U + 1), labels (N) or None."""

    ids: list[str]
    feats: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor | None
    root: Path

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def utterance_of_frame(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.ids)), self.lengths().numpy())

    def frames_of(self, utterances: np.ndarray) -> np.ndarray:
        """Global frame indices of the given utterances, in utterance then time order."""
        starts, ends = self.offsets[:-1].numpy(), self.offsets[1:].numpy()
        parts = [np.arange(starts[u], ends[u]) for u in utterances]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def load_split(data_dir: Path, split: str) -> Frames:
    """Read and validate one split; train includes labels. Shows a progress bar."""
    root = find_root(data_dir)
    ids = read_ids(root / SPLIT_FILES[split])
    labels = read_labels(root / LABEL_FILE) if split == "train" else None
    feats, label_parts, lengths = [], [], []
    for utt in tqdm(ids, desc=f"loading {split} features", unit="utt", disable=None):
        path = root / "feat" / split / f"{utt}.pt"
        feat = load_feature(path, utt)
        if labels is not None:
            if utt not in labels:
                raise UserError(f"{root / LABEL_FILE}: no labels for utterance {utt} (listed in "
                                f"{SPLIT_FILES[split]})")
            if len(labels[utt]) != len(feat):
                raise UserError(f"{path}: utterance {utt} has {len(feat)} frames but "
                                f"{len(labels[utt])} labels in {LABEL_FILE}")
            label_parts.append(labels[utt])
        feats.append(feat)
        lengths.append(len(feat))
    offsets = torch.zeros(len(ids) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return Frames(ids=ids, feats=torch.cat(feats), offsets=offsets,
                  labels=torch.from_numpy(np.concatenate(label_parts)) if labels else None,
                  root=root)


def context_index(f: torch.Tensor, rel: torch.Tensor, first: torch.Tensor,
                  last: torch.Tensor) -> torch.Tensor:
    """Frame indices f + rel (rel on a new last axis) clamped to [first, last], the first and
    last frame of each frame's utterance (shapes that broadcast with f): the course's context,
    edges repeating the first or last frame."""
    return torch.clamp(f.unsqueeze(-1) + rel, first.unsqueeze(-1), last.unsqueeze(-1))


def check_concat(n: int) -> torch.Tensor:
    """The offsets -k..k of an n = 2k + 1 frame context."""
    if n < 1 or n % 2 == 0:
        raise UserError(f"data.concat_nframes={n} must be odd and positive (1, 3, 5, ...)")
    return torch.arange(-(n // 2), n // 2 + 1)


class FrameWindows(Dataset):
    """Frame t as the window of frames t-k..t+k of its utterance (n = 2k + 1), edges repeating
    the first or last frame. Indexed a whole batch at a time: one gather per batch."""

    batched_indexing = True

    def __init__(self, frames: Frames, frame_idx: np.ndarray | torch.Tensor, n: int, *,
                 flat: bool = True):
        self.rel = check_concat(n)
        self.frames, self.n, self.flat = frames, n, flat
        self.frame_idx = torch.as_tensor(frame_idx, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.frame_idx)

    def windows(self, f: torch.Tensor) -> torch.Tensor:
        offsets = self.frames.offsets
        u = torch.searchsorted(offsets, f, right=True) - 1
        x = self.frames.feats[context_index(f, self.rel, offsets[u], offsets[u + 1] - 1)]
        return x.flatten(1) if self.flat else x

    def __getitem__(self, i):
        i = torch.as_tensor(i, dtype=torch.int64)
        single = i.dim() == 0
        f = self.frame_idx[i.reshape(-1)]
        x = self.windows(f)
        item = (x,) if self.frames.labels is None else (x, self.frames.labels[f])
        return tuple(t[0] for t in item) if single else item


class Utterances(Dataset):
    """Whole utterances for a tagger, indexed a batch at a time: items `i` give (x, lengths,
    labels): x (B, T, 39 n) zero-padded to the longest (each frame with its n-frame context
    of its own utterance, n = 1 by default), lengths (B,), and the labels of the real frames
    only, utterance after utterance (without labels for the test set). `frame_idx` are the
    frames of whole utterances, grouped and in time order (what `Frames.frames_of` gives), so
    the predictions, joined in dataset order, line up with it frame for frame."""

    batched_indexing = True

    def __init__(self, frames: Frames, frame_idx: np.ndarray | torch.Tensor, n: int = 1):
        self.rel = check_concat(n)
        self.frames, self.n = frames, n
        frame_idx = torch.as_tensor(frame_idx, dtype=torch.int64)
        utt = torch.searchsorted(frames.offsets, frame_idx, right=True) - 1
        self.utterances = torch.unique_consecutive(utt)
        self.lengths = frames.lengths()[self.utterances]
        if not torch.equal(torch.from_numpy(frames.frames_of(self.utterances.numpy())),
                           frame_idx):
            raise UserError("a tagger needs whole utterances, frames in time order; split "
                            "by utterance (the course's split and hw2 kfold both do)")

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def __getitem__(self, i):
        i = torch.as_tensor(i, dtype=torch.int64).reshape(-1)
        lengths = self.lengths[i]
        starts = self.frames.offsets[self.utterances[i]][:, None]
        t = torch.arange(int(lengths.max()))
        real = t[None, :] < lengths[:, None]                            # (B, T)
        last = starts + lengths[:, None] - 1
        f = torch.minimum(starts + t[None, :], last)                   # padding: the last frame
        x = self.frames.feats[context_index(f, self.rel, starts, last)].flatten(2)
        x = x.masked_fill(~real[..., None], 0.0)
        if self.frames.labels is None:
            return x, lengths
        return x, lengths, self.frames.labels[f[real]]


# --------------------------------------------------------------------------- demo data
MARKERS = (1, 2, 3, 4)    # demo sounds that set the utterance's state until the next one
MARKER_RATE = 0.12        # the chance that a phone segment is a marker


def _demo_utterance(rng: np.random.Generator, means: np.ndarray, length: int):
    """Phone segments of 3-12 frames. Classes c and c + 20 (c in 1..20) sound alike; which one
    a segment is depends on a state that the last marker phone (sounds 1-4, about one segment
    in eight) set, by its parity: often 30 to 100 frames back, out of sight of a 21- or
    41-frame window, so only a model of the whole utterance knows it. Silence (0) opens and
    closes the utterance and resets nothing."""
    labels = np.empty(length, dtype=np.int64)
    t, prev_sound, state = 0, 0, 0
    while t < length:
        if t == 0 or length - t <= 17:
            sound, label = 0, 0
            dur = length - t if t else int(rng.integers(5, 15))
        else:
            if rng.random() < MARKER_RATE:
                sound = int(rng.choice([s for s in MARKERS if s != prev_sound]))
            else:
                sound = int(rng.choice([s for s in range(len(MARKERS) + 1, 21)
                                        if s != prev_sound]))
            label = sound + 20 * state
            dur = int(rng.integers(3, 13))
            if sound in MARKERS:
                state = sound % 2
        labels[t:t + dur] = label
        t += dur
        prev_sound = sound
    sounds = np.where(labels > 20, labels - 20, labels)
    feats = means[sounds] + rng.normal(0.0, 3.0, (length, FEAT_DIM))
    feats = (feats - feats.mean(0)) / feats.std(0)  # per-utterance CMVN, like the real features
    return feats.astype(np.float32), labels[:length]


def write_demo_data(dest: Path, n_train: int = 250, n_test: int = 60, seed: int = 0) -> Path:
    """A deterministic synthetic libriphone/ in the real layout (ids, files, shapes, dtypes)."""
    rng = np.random.default_rng(seed)
    root = Path(dest) / "libriphone"
    means = rng.normal(0.0, 1.0, (21, FEAT_DIM))
    for split, count in (("train", n_train), ("test", n_test)):
        (root / "feat" / split).mkdir(parents=True, exist_ok=True)
        ids, label_lines, answers = [], [], []
        for i in range(count):
            speaker = int(rng.integers(19, 9000))
            utt = f"{speaker}-{int(rng.integers(100, 200000))}-{i:04d}"
            feats, labels = _demo_utterance(rng, means, int(rng.integers(139, 999)))
            torch.save(torch.from_numpy(feats), root / "feat" / split / f"{utt}.pt")
            ids.append(utt)
            label_lines.append(utt + " " + " ".join(map(str, labels.tolist())))
            answers.append(labels)
        # like the real files, the last line has no trailing newline
        (root / SPLIT_FILES[split]).write_text("\n".join(ids), encoding="utf-8")
        if split == "train":
            (root / LABEL_FILE).write_text("\n".join(label_lines), encoding="utf-8")
    test_classes = np.concatenate(answers)       # beside libriphone/, as no real file is
    write_csv_atomic(Path(dest) / DEMO_ANSWERS, ("Id", "Class"),
                     zip(range(len(test_classes)), test_classes.tolist(), strict=True))
    return Path(dest)
