#!/usr/bin/env python3
"""The sequence recipes (HW2 tagger, window BiLSTM and MLP, HW5 Transformer, HW7 BERT) through
the engine.

The machinery is gpu_recipes.py's (the recipe's real config, the homework's own readers,
datasets, samplers and Trainer, a warm-up then a timed window of updates, the loader alone,
evaluation, the projection at the real item counts of HOMEWORKS.md); the data are made for the
sequence tasks:

  hw2              the demo libriphone/ (39-dim MFCC frames in the real layout): the tagger's
                   batches of whole utterances within 16,000 padded frames; items are
                   utterances (the real 2,116,368 train / 527,790 valid frames in the demo's
                   frames per utterance), the loss counts frames
  hw2-window,      the same frames in the window recipes' 41- or 21-frame windows at batch
  hw2-strong       512; items are frames
  hw5              a synthetic bitext of 20,000 pairs at the recipe's sizes (SentencePiece 8000,
                   8192-token batches x 2, Transformer-base); HOMEWORKS.md states only the
                   cleaning filter (1-1000 words or characters, ratio <= 9), so the lengths are
                   an assumption said here: English words log-normal (median 16, sigma 0.6),
                   Chinese characters 1.5 x as many (TED's mean is about 20 words); words of a
                   Zipf lexicon of 20,000 words of 1-3 syllables (400 consonant-vowel-consonant
                   syllables, so pieces are shared as in real words), characters of a Zipf set
                   of 4,000 CJK characters: about 40 English and 25 Chinese pieces a pair, near
                   the 63 a pair of the README's FLOP estimate. Items are sentences (393,980
                   real), tokens are target pieces;
                   evaluation is the recipe's beam-5 validation; after each variant 500 test
                   sentences are decoded with beam 5 with and without the decoder's cache
  hw7 ...          windows of the recipe's length (512 sharing 128) over the demo questions with
                   paragraphs joined in pairs (about 470 characters, near the real mean of
                   390-417 tokens), a BERT built from a config with random weights (model.name
                   = "": character vocabulary, so the embedding table is smaller than a real
                   checkpoint's 21,128 rows; the encoder is the same): hw7 the BERT-base shape
                   (768, 12 layers, 12 heads, ff 3072) at 8 x 4 accumulated, hw7-noaccum the
                   same at 32 x 1, hw7-large the recipe's MacBERT-large shape (1024, 24, 16,
                   4096); items are windows (31,690 train / 4,131 dev questions)

Per variant: AMP bf16 / fp16 (with the scaler) / off, and torch.compile beside bf16. On the CPU
the AMP variants run the same code (the engine's rule: AMP on CUDA only) and compile uses the
capture-only "eager" backend under --tiny. The printed line is gpu_recipes.py's, with tokens/s
for HW5 and a second line of decoding sentences/s.

Usage: python scripts/bench/gpu_sequences.py [--only hw2 hw5 hw7 ...] [--amp bf16 fp16 off]
                                             [--no-extras] [--warmup 5] [--steps 20] [--tiny]
                                             [--device auto]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_recipes import FLOPS, Recipe, run  # noqa: E402

from common.core.io import write_text_atomic  # noqa: E402
from hw.hw5_translate.decode import beam_search  # noqa: E402
from hw.hw5_translate.model import PAD  # noqa: E402
from hw.hw5_translate.task import BOS, EOS  # noqa: E402
from hw.hw7_qa import data as qa_data  # noqa: E402

HW5_PAIRS, HW5_TEST, HW5_DECODE = 20_000, 500, 500


def zipf_choice(rng, n: int, size) -> np.ndarray:
    """Indices 0..n-1 drawn with probability proportional to 1 / (rank + 1)."""
    p = 1.0 / np.arange(1, n + 1)
    return rng.choice(n, size=size, p=p / p.sum())


def bitext(dest: Path, tiny: bool, seed: int = 5) -> Path:
    """raw.en / raw.zh and test/test.en, test/test.zh of the stated length distribution."""
    rng = np.random.default_rng(seed)
    pairs, test = (600, 16) if tiny else (HW5_PAIRS, HW5_TEST)
    letters = np.array(list("bcdfghjklmnprstvwyz")), np.array(list("aeiou"))
    syllables = ["".join(rng.choice(side) for side in (letters[0], letters[1], letters[0]))
                 for _ in range(400)]
    lexicon = ["".join(syllables[k] for k in zipf_choice(rng, 400, int(rng.integers(1, 4))))
               for _ in range(300 if tiny else 20_000)]
    chars = [chr(0x4E00 + int(k)) for k in rng.choice(20_000, 300 if tiny else 4_000,
                                                       replace=False)]

    def pair() -> tuple[str, str]:
        words = int(np.clip(round(rng.lognormal(np.log(16), 0.6)), 1, 200))
        n_zh = int(np.clip(round(words * 1.5 * rng.lognormal(0.0, 0.2)), 1, 300))
        en = " ".join(lexicon[k] for k in zipf_choice(rng, len(lexicon), words)) + " ."
        zh = "".join(chars[k] for k in zipf_choice(rng, len(chars), n_zh)) + "。"
        return en.capitalize(), zh

    train = [pair() for _ in range(pairs)]
    held = [pair() for _ in range(test)]
    dest.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest / "raw.en", "".join(en + "\n" for en, _ in train))
    write_text_atomic(dest / "raw.zh", "".join(zh + "\n" for _, zh in train))
    (dest / "test").mkdir(exist_ok=True)
    write_text_atomic(dest / "test" / "test.en", "".join(en + "\n" for en, _ in held))
    write_text_atomic(dest / "test" / "test.zh", "。\n" * test)
    return dest


def joined_paragraphs(dest: Path, tiny: bool) -> Path:
    """The HW7 demo files with paragraphs 2k and 2k+1 joined (answer offsets shifted)."""
    sizes = (("train", 40, 5), ("dev", 8, 5), ("test", 8, 5)) if tiny else \
        (("train", 400, 5), ("dev", 60, 5), ("test", 20, 5))
    qa_data.write_demo_data(dest, sizes=sizes)
    for split in ("train", "dev", "test"):
        path = dest / qa_data.FILES[split]
        doc = json.loads(path.read_text(encoding="utf-8"))
        texts = doc["paragraphs"]
        offset = [0 if pid % 2 == 0 else len(texts[pid - 1]) for pid in range(len(texts))]
        for q in doc["questions"]:
            shift = offset[q["paragraph_id"]]
            if isinstance(q["answer_start"], int):
                q["answer_start"] += shift
                q["answer_end"] += shift
            q["paragraph_id"] //= 2
        doc["paragraphs"] = ["".join(texts[k:k + 2]) for k in range(0, len(texts), 2)]
        write_text_atomic(path, json.dumps(doc, ensure_ascii=False))
    return dest


BERT_BASE = ("model.hidden=768", "model.layers=12", "model.heads=12", "model.ff_dim=3072")
BERT_LARGE = ("model.hidden=1024", "model.layers=24", "model.heads=16", "model.ff_dim=4096")
HW7_TINY = ("model.hidden=64", "model.layers=2", "model.heads=2", "model.ff_dim=128",
            "data.max_length=128", "data.doc_stride=32", "data.max_question_tokens=32")
HW7_REAL = dict(real_items=31690 + 4131, real_valid=4131, prepare=joined_paragraphs,
                unit="windows", kind="sequences")
HW7_ESTIMATE = f"about 40 min an epoch on a T4 with AMP, 15 on a V100 ({FLOPS})"

RECIPES = {
    "hw2": Recipe("hw2", "hw2", 2116368 + 527790, {"n_train": 60, "n_test": 5},
                  unit="utterances", counted="frames", kind="sequences", real_valid=527790),
    "hw2-window": Recipe("hw2", "hw2_window", 2116368 + 527790, {"n_train": 60, "n_test": 5},
                         unit="frames", kind="sequences", real_valid=527790),
    "hw2-strong": Recipe("hw2", "hw2_strong", 2116368 + 527790, {"n_train": 60, "n_test": 5},
                         unit="frames",
                         kind="sequences", real_valid=527790),
    "hw5": Recipe("hw5", "hw5", 393980, kind="sequences", prepare=bitext, unit="sentences",
                  counted="target tokens",
                  tiny_sets=("data.vocab_size=400", "data.max_tokens=512", "model.d_model=64",
                             "model.heads=2", "model.enc_layers=2", "model.dec_layers=2",
                             "model.ff_dim=128", "trainer.batch_size=100000",
                             "trainer.eval_batch_size=100000"),
                  estimate=f"2.5-3 h on a T4, 45 min on an A100, plus beam search ({FLOPS})"),
    "hw7": Recipe("hw7", "hw7", sets=('model.name=""', *BERT_BASE), tiny_sets=HW7_TINY,
                  **HW7_REAL),
    "hw7-noaccum": Recipe("hw7", "hw7", sets=('model.name=""', *BERT_BASE,
                                              "trainer.batch_size=32", "trainer.accum_steps=1"),
                          tiny_sets=(*HW7_TINY, "trainer.accum_steps=1"), **HW7_REAL),
    "hw7-large": Recipe("hw7", "hw7", sets=('model.name=""', *BERT_LARGE), tiny_sets=HW7_TINY,
                        estimate=HW7_ESTIMATE, **HW7_REAL),
}


def decode_rate(task, trainer, row: dict, data_dir: Path) -> None:
    """HW5: beam-5 decoding of the first test sentences, with and without the decoder's
    cache, in sentences/s (row["decode_cached_s"], row["decode_uncached_s"])."""
    if not hasattr(task, "translate"):
        return
    test = task.make_test_dataset(task.load_test(data_dir))
    test.rows = test.rows[:HW5_DECODE]
    test.lengths = test.lengths[:HW5_DECODE]
    cfg = task.config["model"]
    model = trainer.model.eval()
    batches = [test[idx] for idx in trainer.sampler(test, train=False)]
    for cached in (True, False):
        start = time.perf_counter()
        with torch.no_grad(), trainer.autocast():
            for batch in batches:
                src = trainer.to_device(batch)["src"]
                beam_search(model, src, beam=cfg.beam, bos=BOS, eos=EOS, pad=PAD,
                            a=cfg.max_len_a, b=cfg.max_len_b, cached=cached)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        key = "decode_cached_s" if cached else "decode_uncached_s"
        row[key] = len(test) / (time.perf_counter() - start)
    row["decoded"], row["beam"] = len(test), cfg.beam


def report_decoding(row: dict) -> str | None:
    if "decoded" not in row:
        return None
    return (f"{row['recipe']:12s} beam {row['beam']} decoding of {row['decoded']} test sentences: "
            f"{row['decode_cached_s']:.1f} sentences/s cached, "
            f"{row['decode_uncached_s']:.1f} uncached")


def main(argv: list[str] | None = None) -> list[dict]:
    return run(RECIPES, argv, __doc__, after=decode_rate, extra=report_decoding)


if __name__ == "__main__":
    main()
