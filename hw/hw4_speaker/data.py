"""HW4 files: the course's Dataset/ (metadata.json, testdata.json, mapping.json, uttr-*.pt) read
with validation, packed once into one memory-mapped array with offsets, and the course's log-mel
front end for real audio (`featurize`), which also makes the demo data from synthetic voices."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.core.errors import UserError
from common.core.io import (
    building_folder,
    cached_array,
    files_key,
    read_text,
    write_bytes_atomic,
    write_csv_atomic,
    write_text_atomic,
)
from common.core.runtime import hashed_uniform
from common.data.loading import find_data_root
from common.data.ragged import Ragged, offsets_of
from common.engine.checkpoint import load_torch_file, save_torch_file
from common.engine.rundir import RunDir

N_MELS = 40
PAD_VALUE = -20.0                  # the course pads with log of a near-zero energy
SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac")
DEMO_ANSWERS = "demo_test_answers.csv"
SOURCES = "sources.csv"            # featurize: uttr-*.pt -> the audio file it came from
WINDOW = 400                       # samples in one analysis window (n_fft)
STORE_VERSION = 1


@dataclass
class Recordings:
    """One split: feature files, frame counts and (training) speaker indices."""

    root: Path
    paths: list[str]                 # feature_path of each utterance, relative to root
    lengths: np.ndarray              # int64 mel_len
    labels: np.ndarray | None        # int64 speaker index (None for the test split)
    speakers: list[str]              # speaker name of each index (id2speaker)

    def __len__(self) -> int:
        return len(self.paths)


def find_root(data_dir: Path) -> Path:
    return find_data_root(data_dir, "Dataset", ("metadata.json", "testdata.json"),
                          "HW4 metadata (metadata.json, testdata.json)")


def _json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing; the HW4 Dataset/ folder needs metadata.json, "
                        "testdata.json and mapping.json")
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); download the data again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top")
    return data


def _record(path: Path, rec, where: str) -> tuple[str, int]:
    if not isinstance(rec, dict) or not isinstance(rec.get("feature_path"), str) or \
            not isinstance(rec.get("mel_len"), int) or rec["mel_len"] < 1:
        raise UserError(f"{path}: {where} needs feature_path (a file name) and mel_len (a "
                        f"positive integer), got {str(rec)[:80]}")
    return rec["feature_path"], rec["mel_len"]


def load_speakers(root: Path) -> list[str]:
    """mapping.json's id2speaker as a list, checked against speaker2id."""
    path = root / "mapping.json"
    data = _json(path)
    s2i, i2s = data.get("speaker2id"), data.get("id2speaker")
    if not isinstance(s2i, dict) or not isinstance(i2s, dict) or len(s2i) != len(i2s):
        raise UserError(f"{path}: needs speaker2id and id2speaker of equal size")
    speakers = [i2s.get(str(i)) for i in range(len(i2s))]
    for i, name in enumerate(speakers):
        if name is None or s2i.get(name) != i:
            raise UserError(f"{path}: id2speaker[{i!r}] = {name!r} disagrees with speaker2id")
    return speakers


def load_train(data_dir: Path) -> Recordings:
    root = find_root(Path(data_dir))
    speakers = load_speakers(root)
    index = {name: i for i, name in enumerate(speakers)}
    path = root / "metadata.json"
    data = _json(path)
    if not isinstance(data.get("speakers"), dict):
        raise UserError(f"{path}: needs a 'speakers' object of speaker -> utterances")
    paths, lengths, labels = [], [], []
    for name, records in data["speakers"].items():
        if name not in index:
            raise UserError(f"{path}: speaker {name!r} is not in mapping.json; download the "
                            "data again")
        if not isinstance(records, list):
            raise UserError(f"{path}: speaker {name!r} needs a list of utterances")
        for rec in records:
            feature, length = _record(path, rec, f"an utterance of {name}")
            paths.append(feature)
            lengths.append(length)
            labels.append(index[name])
    if not paths:
        raise UserError(f"{path}: no training utterances")
    return Recordings(root, paths, np.array(lengths, dtype=np.int64),
                      np.array(labels, dtype=np.int64), speakers)


def load_test(data_dir: Path) -> Recordings:
    root = find_root(Path(data_dir))
    path = root / "testdata.json"
    data = _json(path)
    if not isinstance(data.get("utterances"), list):
        raise UserError(f"{path}: needs an 'utterances' list")
    recs = [_record(path, rec, f"utterance {i}") for i, rec in enumerate(data["utterances"])]
    return Recordings(root, [p for p, _ in recs], np.array([n for _, n in recs], np.int64),
                      None, load_speakers(root))


# --------------------------------------------------------------------------- packed store
def load_feature(path: Path, length: int) -> torch.Tensor:
    feat = load_torch_file(path, missing="missing feature file; download the data again",
                           unreadable="truncated or not a tensor; download the data again")
    if not isinstance(feat, torch.Tensor) or feat.dim() != 2 or feat.shape[1] != N_MELS or \
            not feat.is_floating_point():
        what = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise UserError(f"{path}: expected a float tensor (mel_len, {N_MELS}), got {what}")
    if feat.shape[0] != length:
        raise UserError(f"{path}: {feat.shape[0]} frames but the metadata says mel_len "
                        f"{length}; download the data again")
    return feat


def pack(utts: Recordings, *, cache_dir: str | Path | None, dtype: str = "float32",
         desc: str = "pack") -> Ragged:
    """Every utterance of a split in one (total_frames, 40) array, utterance i its rows
    offsets[i]:offsets[i + 1], each file read once and validated; kept on disk under cache_dir
    by a key of the files and settings and memory-mapped when reused."""
    offsets = offsets_of(utts.lengths)
    files = [utts.root / p for p in utts.paths]
    for f in files[:1]:
        if not f.is_file():
            raise UserError(f"{f}: missing feature file; download the data again")
    npy = None
    if cache_dir:
        try:
            key = files_key(files, STORE_VERSION, dtype, utts.lengths.tolist())
        except FileNotFoundError as exc:
            raise UserError(f"{exc.filename}: missing feature file; download the data "
                            "again") from None
        npy = Path(cache_dir).expanduser() / f"mels-{key}.npy"

    def build() -> np.ndarray:
        array = np.empty((offsets[-1], N_MELS), dtype=dtype)
        for i, f in enumerate(tqdm(files, desc=desc, unit="utt", disable=None,
                                   dynamic_ncols=True)):
            array[offsets[i]:offsets[i + 1]] = load_feature(f, int(utts.lengths[i])).numpy()
        return array

    array = cached_array(npy, build, shape=(int(offsets[-1]), N_MELS), dtype=dtype)
    return Ragged(array, offsets, npy)


# --------------------------------------------------------------------------- front end
def mel_frontend():
    """The course's features: 16 kHz, n_fft 400, window 400, hop 160, 40 mel bins from 50 Hz,
    power 2; then clamp at 1e-9 and natural log (see log_mel)."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=WINDOW, win_length=WINDOW, hop_length=160, f_min=50.0,
        n_mels=N_MELS, power=2.0)


def log_mel(wave: torch.Tensor, frontend=None) -> torch.Tensor:
    """(samples,) float at 16 kHz -> (frames, 40) float32 log-mel energies."""
    frontend = frontend or mel_frontend()
    return frontend(wave.float()).clamp_min(1e-9).log().T.contiguous()


def read_audio(path: Path) -> torch.Tensor:
    """Mono float32 at 16 kHz (resampled with torchaudio if the file has another rate)."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise UserError(f"{path}: unreadable audio ({exc}); convert it to WAV or FLAC") from None
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != SAMPLE_RATE:
        import torchaudio

        wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE)
    return wave


def featurize(audio_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """Audio in <speaker>/<file>.wav|flac (and an optional test/ folder of unlabelled files) ->
    the course's Dataset/ layout in out_dir: metadata.json, mapping.json, testdata.json and one
    uttr-<32 hex>.pt (float32 (mel_len, 40)) per file, plus sources.csv (which audio file
    became which uttr-*.pt, and its speaker). Names are drawn from `seed`, so the same audio
    gives the same files. Everything is written into a folder beside out_dir and renamed at
    the end (building_folder): a failure leaves nothing; out_dir must not hold files yet."""
    audio_dir, out_dir = Path(audio_dir), Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: already holds files; choose a new --out folder (or "
                        "remove this one)")
    RunDir(out_dir).check_writable("--out")
    speakers = sorted(p.name for p in audio_dir.iterdir() if p.is_dir() and p.name != "test") \
        if audio_dir.is_dir() else []
    if not speakers:
        raise UserError(f"{audio_dir}: no speaker folders (<speaker>/<file>.wav or .flac)")

    def audio_files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)

    train = {spk: files for spk in speakers if (files := audio_files(audio_dir / spk))}
    if not train:
        raise UserError(f"{audio_dir}: the speaker folders hold no .wav or .flac files")
    test_dir = audio_dir / "test"
    test_files = audio_files(test_dir) if test_dir.is_dir() else []
    rng = np.random.default_rng(seed)
    frontend = mel_frontend()
    sources: list[tuple[str, str, str]] = []

    def convert(path: Path, speaker: str, folder: Path) -> dict:
        wave = read_audio(path)
        if len(wave) < WINDOW:
            raise UserError(f"{path}: {len(wave)} samples, shorter than one analysis window "
                            f"({WINDOW} samples, 25 ms at 16 kHz); remove it or record longer")
        name = f"uttr-{rng.bytes(16).hex()}.pt"
        feat = log_mel(wave, frontend)
        save_torch_file(folder / name, feat)
        sources.append((name, str(path), speaker))
        return {"feature_path": name, "mel_len": int(feat.shape[0])}

    with building_folder(out_dir) as tmp:
        metadata = {"n_mels": N_MELS, "speakers": {}}
        for spk, files in tqdm(train.items(), desc="featurize", unit="speaker", disable=None):
            metadata["speakers"][spk] = [convert(f, spk, tmp) for f in files]
        test = {"n_mels": N_MELS, "utterances": [convert(f, "", tmp) for f in test_files]}
        names = list(metadata["speakers"])
        mapping = {"speaker2id": {s: i for i, s in enumerate(names)},
                   "id2speaker": {str(i): s for i, s in enumerate(names)}}
        for name, data in (("metadata.json", metadata), ("testdata.json", test),
                           ("mapping.json", mapping)):
            write_text_atomic(tmp / name, json.dumps(data))
        write_csv_atomic(tmp / SOURCES, ("feature_path", "source", "speaker"), sources)
    return out_dir


# --------------------------------------------------------------------------- demo voices
def synth_voice(rng: np.random.Generator, pitch: float, formants: np.ndarray,
                seconds: float) -> np.ndarray:
    """A source-filter voice: a glottal pulse train with jitter at `pitch` Hz through resonators
    at the speaker's formants (shifted per vowel), with breath noise; 16 kHz float32."""
    from scipy.signal import lfilter

    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = pitch * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    source = np.sign(np.sin(phase)) * (np.sin(phase) > 0.6) + 0.05 * rng.normal(size=n)
    out = np.zeros(n)
    segment = int(0.25 * SAMPLE_RATE)
    for start in range(0, n, segment):
        part = source[start:start + segment]
        vowel = formants * rng.uniform(0.85, 1.15, len(formants))
        y = np.zeros(len(part))
        for f, bw in zip(vowel, (80, 120, 160), strict=False):  # two-pole resonators
            r = math.exp(-math.pi * bw / SAMPLE_RATE)
            y += lfilter([1.0], [1.0, -2 * r * math.cos(2 * math.pi * f / SAMPLE_RATE), r * r],
                         part)
        out[start:start + segment] = y * rng.uniform(0.3, 1.0)
    out = out / (np.abs(out).max() + 1e-9) * 0.5 + rng.uniform(0.005, 0.03) * rng.normal(size=n)
    return out.astype(np.float32)


def write_demo_audio(dest: Path, *, n_speakers: int = 40, per_speaker: int = 16,
                     n_test: int = 320, seed: int = 0) -> tuple[Path, list[str]]:
    """WAV files of synthetic speakers (<speaker>/<k>.wav) and test/<k>.wav; returns the folder
    and the test answer key (speaker of each test file, in file order)."""
    import soundfile

    rng = np.random.default_rng(seed)
    names = [f"id{10000 + 37 * i:05d}" for i in range(n_speakers)]
    # close voices: pitches within an octave, formants near a shared vowel space; each
    # utterance shifts its speaker's pitch by up to 6%
    voices = {name: (rng.uniform(100, 200),
                     np.array([500, 1400, 2500]) * rng.uniform(0.85, 1.15, 3))
              for name in names}
    def write_wav(path: Path, wave: np.ndarray) -> None:
        # encoded in memory, written by Python: libsndfile reports a full disk as "System
        # error." without the errno that makes it one line for the user
        blob = io.BytesIO()
        soundfile.write(blob, wave, SAMPLE_RATE, format="WAV")
        write_bytes_atomic(path, blob.getvalue())

    for name in names:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_speaker):
            pitch, formants = voices[name]
            write_wav(dest / name / f"{k:03d}.wav", synth_voice(
                rng, pitch * rng.uniform(0.94, 1.06), formants, rng.uniform(1.0, 4.0)))
    (dest / "test").mkdir(parents=True, exist_ok=True)
    answers = []
    for k in range(n_test):
        name = names[int(rng.integers(n_speakers))]
        pitch, formants = voices[name]
        write_wav(dest / "test" / f"{k:04d}.wav", synth_voice(
            rng, pitch * rng.uniform(0.94, 1.06), formants, rng.uniform(1.0, 4.0)))
        answers.append(name)
    return dest, answers


def write_demo_data(dest: Path) -> Path:
    """Synthetic voices through the real front end, into dest/Dataset/, with the test answer
    key in dest/demo_test_answers.csv."""
    dest = Path(dest)
    audio, answers = write_demo_audio(dest / "audio")
    root = featurize(audio, dest / "Dataset")
    test = json.loads((root / "testdata.json").read_text())["utterances"]
    write_csv_atomic(dest / DEMO_ANSWERS, ("Id", "Category"),
                     ((rec["feature_path"], name) for rec, name in zip(test, answers,
                                                                        strict=True)))
    return dest


class Utterances:
    """The dataset: utterances of a packed store, indexed a whole batch at a time: (features
    (B, T, 40) padded with -20, lengths (B,), labels (B,) when known). With `crop`, each item is
    a crop of that many frames (shorter ones whole), its start a pure function of (seed,
    epoch, item)."""

    batched_indexing = True

    def __init__(self, store: Ragged, rows: np.ndarray, labels: np.ndarray | None,
                 *, crop: int = 0, crop_max: int = 0, seed: int = 0):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        full = np.diff(store.offsets)[self.rows]
        self.crop, self.crop_max, self.seed, self.epoch = crop, crop_max, seed, 0
        self.lengths = np.minimum(full, crop) if crop else full  # what a batch holds

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _crop_len(self, idx: np.ndarray) -> int:
        if self.crop_max > self.crop:  # one length per batch, drawn from its first item
            u = hashed_uniform(self.seed, self.epoch + 7919, idx[:1])[0]
            return self.crop + int(u * (self.crop_max - self.crop + 1))
        return self.crop

    def __getitem__(self, idx):
        idx = np.asarray(torch.as_tensor(idx).reshape(-1), dtype=np.int64)
        rows = self.rows[idx]
        starts, full = self.store.offsets[rows], np.diff(self.store.offsets)[rows]
        take = full.copy()
        if self.crop:
            size = self._crop_len(idx)
            take = np.minimum(full, size)
            begin = np.floor(hashed_uniform(self.seed, self.epoch, idx)
                             * (full - take + 1)).astype(np.int64)
            starts = starts + begin
        width = int(take.max())
        frames = np.arange(width)[None, :]
        gather = np.minimum(starts[:, None] + frames, starts[:, None] + take[:, None] - 1)
        x = torch.from_numpy(np.asarray(self.store.values[gather.reshape(-1)],
                                        dtype=np.float32).reshape(len(idx), width, -1))
        lengths = torch.from_numpy(take)
        x[torch.from_numpy(frames >= take[:, None])] = PAD_VALUE
        if self.labels is None:
            return x, lengths
        return x, lengths, self.labels[torch.from_numpy(idx)]

    def with_crop(self, crop: int, seed: int) -> Utterances:
        view = Utterances(self.store, self.rows, self.labels, crop=crop, seed=seed)
        return view
