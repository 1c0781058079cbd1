"""HW5 files and preprocessing: the course's TED2020 layout read with validation, its cleaning
rules (English and Chinese), the training-pair filters, the 1% validation split with seed 73,
one shared SentencePiece unigram model trained once and cached, sentences encoded once into
packed id arrays; and a synthetic English -> Traditional Chinese demo corpus in the same layout.

Layout (either naming, in --data or one level down): raw.en / raw.zh (or train_dev.raw.en /
.zh), test/test.en (or test.raw.en), and for back-translation ted_zh_corpus.deduped."""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.core.errors import UserError, warn_user
from common.core.io import (
    files_key,
    load_or_build,
    read_text,
    write_bytes_atomic,
    write_text_atomic,
)
from common.data.loading import find_root_or_child
from common.data.ragged import Ragged

TRAIN_NAMES = (("raw.en", "raw.zh"), ("train_dev.raw.en", "train_dev.raw.zh"))
TEST_NAMES = ("test/test.en", "test.raw.en")
MONO_NAME = "ted_zh_corpus.deduped"
DEMO_REFERENCES = "demo_test_references.zh"
SPM_VERSION = 1


# --------------------------------------------------------------------------- files
def find_root(data_dir: str | Path) -> Path:
    """The folder holding the training pair: data_dir itself or one level down."""
    return find_root_or_child(
        data_dir, tuple(en for en, _ in TRAIN_NAMES),
        "no raw.en/raw.zh (or train_dev.raw.en/.zh) here or one level down", archives="*.tgz",
        hint="point --data at the extracted ted2020.tgz and test.tgz")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (without line ends); a missing or undecodable file is one
    clear error."""
    if not path.is_file():
        raise UserError(f"{path}: missing; it comes with the course's ted2020.tgz / test.tgz")
    text = read_text(path, "download the file again or convert it to UTF-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [s.rstrip("\r") for s in lines]


def train_pair_paths(root: Path) -> tuple[Path, Path]:
    for en, zh in TRAIN_NAMES:
        if (root / en).is_file() or (root / zh).is_file():
            return root / en, root / zh
    return root / TRAIN_NAMES[0][0], root / TRAIN_NAMES[0][1]


def read_parallel(en_path: Path, zh_path: Path) -> tuple[list[str], list[str]]:
    en, zh = read_lines(en_path), read_lines(zh_path)
    if len(en) != len(zh):
        raise UserError(f"{zh_path}: {len(zh)} lines but {en_path.name} has {len(en)}; the two "
                        "sides must be line-aligned (download both again)")
    return en, zh


def test_path(root: Path, lang: str = "en") -> Path:
    """The test file of one side: test/test.<lang> or test.raw.<lang> (the Chinese side is the
    course's pseudo-reference, every line 。; a zh-en run translates it, harmlessly)."""
    for name in TEST_NAMES:
        name = name[:-2] + lang
        for base in (root, root.parent):
            if (base / name).is_file():
                return base / name
    raise UserError(f"{root}: no test/test.{lang} or test.raw.{lang}; extract the course's "
                    f"test.tgz beside raw.en")


# --------------------------------------------------------------------------- cleaning
def full_to_half(s: str) -> str:
    """Full-width ASCII variants (U+FF01..U+FF5E) and the ideographic space to half width."""
    out = []
    for ch in s:
        code = ord(ch)
        if code == 0x3000:
            code = 0x20
        elif 0xFF01 <= code <= 0xFF5E:
            code -= 0xFEE0
        out.append(chr(code))
    return "".join(out)


PARENS = re.compile(r"\([^()]*\)")
EN_PUNCT = re.compile(r'([.,;!?()"])')
ZH_PUNCT = re.compile(r'([。,;!?()"~「」])')


def clean_en(s: str) -> str:
    """The course's English rule: drop parenthesised text and hyphens, space out . , ; ! ? ( ) "
    and collapse whitespace."""
    s = PARENS.sub("", s).replace("-", "")
    return " ".join(EN_PUNCT.sub(r" \1 ", s).split())


def clean_zh(s: str) -> str:
    """The course's Chinese rule: full width to half width, drop parenthesised text, spaces, em
    dashes and underscores, curly double quotes to ", space out 。 , ; ! ? ( ) " ~ 「 」."""
    s = PARENS.sub("", full_to_half(s))
    for gone in (" ", "—", "_"):
        s = s.replace(gone, "")
    s = s.replace("“", '"').replace("”", '"')
    return " ".join(ZH_PUNCT.sub(r" \1 ", s).split())


CLEAN = {"en": clean_en, "zh": clean_zh}
BETWEEN_WORDS = re.compile(r"(?<=[A-Za-z0-9])\s+(?=[A-Za-z0-9])")


def join_zh(s: str) -> str:
    """Chinese as a reader writes it: the spaces that cleaning and subwords put around
    characters and punctuation dropped, except between two Latin words or numbers
    ("我已经做作业了 。" -> "我已经做作业了。", "我 有 iPhone 12" -> "我有iPhone 12")."""
    words = BETWEEN_WORDS.sub("\0", " ".join(s.split()))
    return words.replace(" ", "").replace("\0", " ")


def length(s: str, lang: str) -> int:
    """English in words, Chinese in characters (the course's measure)."""
    return len(s) if lang == "zh" else len(s.split())


def keep_pair(en: str, zh: str, *, min_len: int = 1, max_len: int = 1000,
              ratio: float = 9.0) -> bool:
    """The course's training filter: both lengths in [min_len, max_len] and neither more than
    `ratio` times the other."""
    a, b = length(en, "en"), length(zh, "zh")
    if not (min_len <= a <= max_len and min_len <= b <= max_len):
        return False
    return ratio <= 0 or (a / b <= ratio and b / a <= ratio)


def split_valid(n: int, ratio: float = 0.01, seed: int = 73) -> tuple[np.ndarray, np.ndarray]:
    """The course's split: the line indices shuffled by random.shuffle after seed 73; the first
    (1 - ratio) train, the rest valid."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    cut = int(n * (1 - ratio))
    return np.asarray(idx[:cut], dtype=np.int64), np.asarray(idx[cut:], dtype=np.int64)


@dataclass
class Corpus:
    """Cleaned, filtered training pairs and the cleaned test sources."""

    root: Path
    en: list[str]
    zh: list[str]
    test_en: list[str]
    raw_pairs: int

    def __len__(self) -> int:
        return len(self.en)


def load_corpus(data_dir: str | Path, *, min_len: int = 1, max_len: int = 1000,
                ratio: float = 9.0) -> Corpus:
    root = find_root(data_dir)
    en_raw, zh_raw = read_parallel(*train_pair_paths(root))
    en, zh = clean_filter(en_raw, zh_raw, min_len=min_len, max_len=max_len, ratio=ratio)
    test = [clean_en(s) for s in read_lines(test_path(root))]
    return Corpus(root, en, zh, test, len(en_raw))


def clean_filter(en_raw: list[str], zh_raw: list[str], **filters) -> tuple[list[str], list[str]]:
    """Both sides cleaned, then the pairs keep_pair accepts."""
    en, zh = [], []
    for a, b in zip(en_raw, zh_raw, strict=True):
        a, b = clean_en(a), clean_zh(b)
        if keep_pair(a, b, **filters):
            en.append(a)
            zh.append(b)
    return en, zh


SYNTHETIC = "synthetic"


def synthetic_paths(prefix: str | Path) -> tuple[Path, Path]:
    """<prefix>.en / <prefix>.zh, or synthetic.en / .zh inside a folder."""
    prefix = Path(prefix).expanduser()
    if prefix.is_dir():
        prefix = prefix / SYNTHETIC
    return prefix.with_name(prefix.name + ".en"), prefix.with_name(prefix.name + ".zh")


def load_synthetic(prefix: str | Path, **filters) -> Corpus:
    """Back-translated pairs (data.synthetic), cleaned and filtered like the real ones."""
    en_path, zh_path = synthetic_paths(prefix)
    if not en_path.is_file() and not zh_path.is_file():
        raise UserError(f"{en_path}: missing (data.synthetic); write it with `hw5 "
                        "backtranslate --run RUN --mono FILE` first")
    en_raw, zh_raw = read_parallel(en_path, zh_path)
    en, zh = clean_filter(en_raw, zh_raw, **filters)
    return Corpus(en_path.parent, en, zh, [], len(en_raw))


# --------------------------------------------------------------------------- subwords
REQUIRED_CHARS = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")


def train_spm(sentences: list[str], *, vocab_size: int, cache_dir: str | Path | None,
              sources: list[Path] = (), char_coverage: float = 1.0):
    """One SentencePiece unigram model over `sentences` (both languages), normalised with
    nmt_nfkc_cf, covering `char_coverage` of the characters (1.0: all); kept under cache_dir
    keyed by the source files and settings. A corpus with more distinct characters than
    vocab_size (real Chinese has thousands) gets a piece for each of them and vocab_size
    learned pieces on top, and a warning says so. Returns a SentencePieceProcessor."""
    import sentencepiece as spm

    def trained(size: int) -> bytes:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=size,
            model_type="unigram", character_coverage=char_coverage,
            normalization_rule_name="nmt_nfkc_cf", input_sentence_size=1_000_000,
            shuffle_input_sentence=True, hard_vocab_limit=False, pad_id=0, unk_id=1,
            bos_id=2, eos_id=3, num_threads=2, minloglevel=2)
        return model.getvalue()

    def build() -> bytes:
        try:
            try:
                return trained(vocab_size)
            except RuntimeError as exc:
                too_few = REQUIRED_CHARS.search(str(exc))
                if not too_few:
                    raise
            chars = int(too_few.group(2))
            grown = chars + 4 + vocab_size  # every character, pad/unk/bos/eos, the pieces asked
            warn_user(f"data.vocab_size={vocab_size} is below the {chars} distinct characters "
                      f"of this corpus: each gets a piece and {vocab_size} pieces are learned on "
                      f"top ({grown} in all); set data.vocab_size={grown} (or the course's "
                      "8000) to choose, or lower data.char_coverage (the rarest characters "
                      "then become unknown)")
            return trained(grown)
        except RuntimeError as exc:
            raise UserError(f"sentencepiece: {str(exc).splitlines()[0]}") from None

    path = None
    if cache_dir:
        key = files_key(list(sources), SPM_VERSION, vocab_size, len(sentences),
                        *([char_coverage] if char_coverage != 1.0 else []))
        path = Path(cache_dir).expanduser() / f"spm{vocab_size}-{key}.model"
    blob = load_or_build(path, build, load=Path.read_bytes, save=write_bytes_atomic)
    return spm.SentencePieceProcessor(model_proto=blob)


def pack(sp, sentences: list[str]) -> Ragged:
    """Encode once (sentencepiece's batched encoder) into one int32 array with offsets."""
    return Ragged.from_rows(sp.encode(sentences), np.int32)


# --------------------------------------------------------------------------- demo corpus
NOUNS = [("cat", "貓", "隻"), ("dog", "狗", "隻"), ("book", "書", "本"), ("car", "車", "輛"),
         ("teacher", "老師", "位"), ("student", "學生", "個"), ("apple", "蘋果", "個"),
         ("house", "房子", "棟"), ("bird", "鳥", "隻"), ("flower", "花", "朵"),
         ("pen", "筆", "支"), ("table", "桌子", "張"), ("doctor", "醫生", "位"),
         ("child", "孩子", "個"), ("boat", "船", "艘"), ("song", "歌", "首")]
PLURAL = {"child": "children"}
ADJECTIVES = [("red", "紅色"), ("big", "大"), ("small", "小"), ("old", "舊"), ("new", "新"),
              ("beautiful", "漂亮"), ("blue", "藍色"), ("happy", "快樂"), ("quiet", "安靜")]
NUMBERS = [("two", "兩"), ("three", "三"), ("four", "四"), ("five", "五"), ("six", "六"),
           ("seven", "七"), ("eight", "八"), ("nine", "九"), ("ten", "十")]
INTRANSITIVE = [("sleep", "sleeps", "睡覺"), ("run", "runs", "跑步"), ("sing", "sings", "唱歌"),
                ("wait", "waits", "等待"), ("play", "plays", "玩耍"), ("rest", "rests", "休息")]
TRANSITIVE = [("see", "sees", "看到"), ("like", "likes", "喜歡"), ("buy", "buys", "買"),
              ("find", "finds", "找到"), ("draw", "draws", "畫"), ("want", "wants", "想要")]
TIMES = [("yesterday", "昨天"), ("today", "今天"), ("every morning", "每天早上"),
         ("last week", "上週"), ("tomorrow", "明天"), ("at night", "晚上")]
PLACES = [("in the park", "在公園"), ("at school", "在學校"), ("at home", "在家"),
          ("in the city", "在城市裡"), ("near the river", "在河邊"), ("on the hill", "在山上")]


def _noun_phrase(rng) -> tuple[str, str, bool]:
    """(English, Chinese, plural): 'the|N [adj] noun(s)' -> '那|N + measure [adj的] noun'."""
    en_noun, zh_noun, measure = NOUNS[int(rng.integers(len(NOUNS)))]
    adj = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))] if rng.random() < 0.5 else None
    if rng.random() < 0.5:
        det_en, det_zh, plural = "the", "那" + measure, False
    else:
        num_en, num_zh = NUMBERS[int(rng.integers(len(NUMBERS)))]
        det_en, det_zh, plural = num_en, num_zh + measure, True
    noun = PLURAL.get(en_noun, en_noun + "s") if plural else en_noun
    en = " ".join([det_en, *([adj[0]] if adj else []), noun])
    zh = det_zh + (adj[1] + "的" if adj else "") + zh_noun
    return en, zh, plural


def demo_pair(rng) -> tuple[str, str]:
    """One sentence pair with the word-order changes of the grammar: time first and place before
    the verb in Chinese, measure words, 的 after adjectives."""
    subj_en, subj_zh, plural = _noun_phrase(rng)
    if rng.random() < 0.5:
        base, third, verb_zh = INTRANSITIVE[int(rng.integers(len(INTRANSITIVE)))]
        obj_en = obj_zh = ""
    else:
        base, third, verb_zh = TRANSITIVE[int(rng.integers(len(TRANSITIVE)))]
        obj_en, obj_zh, _ = _noun_phrase(rng)
    place = PLACES[int(rng.integers(len(PLACES)))] if rng.random() < 0.5 else ("", "")
    time = TIMES[int(rng.integers(len(TIMES)))] if rng.random() < 0.5 else ("", "")
    verb_en = base if plural else third
    en = " ".join(w for w in (subj_en, verb_en, obj_en, place[0], time[0]) if w)
    en = en[0].upper() + en[1:] + "."
    zh = "".join([time[1], subj_zh, place[1], verb_zh, obj_zh]) + "。"
    if rng.random() < 0.05:  # TED's stage directions, which cleaning removes
        en, zh = en + " (Laughter)", zh + "(笑聲)"
    return en, zh


def write_demo_data(dest: Path, pairs: int = 6000, test: int = 300, mono: int = 3000,
                    seed: int = 5) -> Path:
    """raw.en / raw.zh, test/test.en with the course's pseudo-reference test/test.zh (every
    line 。), the real references in demo_test_references.zh, and a monolingual Chinese file."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    train = [demo_pair(rng) for _ in range(pairs)]
    held = [demo_pair(rng) for _ in range(test)]
    mono_zh = [demo_pair(rng)[1] for _ in range(mono)]
    write_text_atomic(dest / "raw.en", "".join(en + "\n" for en, _ in train))
    write_text_atomic(dest / "raw.zh", "".join(zh + "\n" for _, zh in train))
    (dest / "test").mkdir(exist_ok=True)
    write_text_atomic(dest / "test" / "test.en", "".join(en + "\n" for en, _ in held))
    write_text_atomic(dest / "test" / "test.zh", "。\n" * test)
    write_text_atomic(dest / DEMO_REFERENCES, "".join(zh + "\n" for _, zh in held))
    write_text_atomic(dest / MONO_NAME, "".join(zh + "\n" for zh in mono_zh))
    return dest
