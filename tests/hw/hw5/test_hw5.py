"""HW5 preprocessing (first part of the homework): the course's cleaning rules, the training
filter and split, the reader's errors, the demo corpus, and the shared SentencePiece model
cached on disk with ids packed once."""

from __future__ import annotations

import random

import numpy as np
import pytest

from common.core.errors import UserError
from hw.hw5_translate import data as mt


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return mt.write_demo_data(tmp_path_factory.mktemp("hw5demo"))


@pytest.mark.parametrize("raw,clean", [
    ("Thank you so much, Chris.", "Thank you so much , Chris ."),
    ("It's a well-known fact (Laughter) \"really\"!", 'It\'s a wellknown fact " really " !'),
    ("Why?   Because; (Applause) we  can.", "Why ? Because ; we can ."),
    ("(Music)", ""),
])
def test_english_cleaning_follows_the_course(raw, clean):
    assert mt.clean_en(raw) == clean


@pytest.mark.parametrize("raw,clean", [
    ("非常謝謝你，克里斯。", "非常謝謝你 , 克里斯 。"),
    ("「你好」（笑聲）——我們　走吧！", "「 你好 」 我們走吧 !"),
    ("他說“好”；然後～", '他說 " 好 " ; 然後 ~'),
    ("ＡＢＣ＿１２３？", "ABC123 ?"),
])
def test_chinese_cleaning_follows_the_course(raw, clean):
    assert mt.clean_zh(raw) == clean


def test_training_filter_and_the_seed_73_split():
    assert mt.keep_pair("a b c", "一二三")
    assert not mt.keep_pair("", "一")                      # empty side
    assert not mt.keep_pair("a", "一" * 10)                # ratio 10 > 9
    assert mt.keep_pair("a", "一" * 9)
    assert not mt.keep_pair(" ".join(["a"] * 1001), "一" * 1000)
    train, valid = mt.split_valid(1000)
    assert len(train) == 990 and len(valid) == 10
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(1000))
    again, _ = mt.split_valid(1000)
    assert np.array_equal(train, again) and not np.array_equal(train[:20], np.arange(20))
    course = list(range(1000))                     # the course: random.shuffle after seed 73
    random.seed(73)
    random.shuffle(course)
    assert train.tolist() == course[:990] and valid.tolist() == course[990:]


def test_demo_corpus_reads_in_the_course_layout(demo):
    corpus = mt.load_corpus(demo)
    assert corpus.raw_pairs == 6000 and len(corpus) == 6000 and len(corpus.test_en) == 300
    assert not any("Laughter" in s or "笑聲" in s for s in corpus.en + corpus.zh)
    assert all(s.endswith(" .") for s in corpus.en) and all(s.endswith(" 。") for s in corpus.zh)
    assert (demo / "test" / "test.zh").read_text() == "。\n" * 300
    refs = mt.read_lines(demo / mt.DEMO_REFERENCES)
    assert len(refs) == 300 and len(mt.read_lines(demo / mt.MONO_NAME)) == 3000


def test_bad_files_give_one_clear_error(tmp_path, demo):
    (tmp_path / "raw.en").write_text("a\nb\n")
    (tmp_path / "raw.zh").write_text("一\n")
    with pytest.raises(UserError, match="raw.zh: 1 lines but raw.en has 2"):
        mt.load_corpus(tmp_path)
    (tmp_path / "raw.zh").write_bytes("一\n".encode() + b"\xff\xfe\n")
    with pytest.raises(UserError, match="raw.zh: line 2 is not UTF-8 text"):
        mt.load_corpus(tmp_path)
    (tmp_path / "raw.zh").write_text("一\n二\n")
    with pytest.raises(UserError, match="no test/test.en or test.raw.en"):
        mt.load_corpus(tmp_path)
    with pytest.raises(UserError, match="no raw.en/raw.zh"):
        mt.load_corpus(tmp_path / "test")


def test_one_shared_sentencepiece_model_cached_and_ids_packed_once(demo, tmp_path):
    corpus = mt.load_corpus(demo)
    sources = [demo / "raw.en", demo / "raw.zh"]
    sp = mt.train_spm(corpus.en + corpus.zh, vocab_size=400, cache_dir=tmp_path, sources=sources)
    cached = list(tmp_path.glob("spm400-*.model"))
    assert len(cached) == 1
    again = mt.train_spm(corpus.en + corpus.zh, vocab_size=400, cache_dir=tmp_path,
                         sources=sources)
    assert again.serialized_model_proto() == sp.serialized_model_proto()
    assert sp.pad_id() == 0 and sp.unk_id() == 1 and sp.bos_id() == 2 and sp.eos_id() == 3
    packed = mt.pack(sp, corpus.zh[:50])
    assert len(packed) == 50 and packed.values.dtype == np.int32
    for i in (0, 7, 49):
        assert sp.decode(packed[i].tolist()).replace(" ", "") == corpus.zh[i].replace(" ", "")
    en = mt.pack(sp, corpus.en[:5])
    assert sp.decode(en[0].tolist()) == corpus.en[0].lower()   # nmt_nfkc_cf case-folds
    assert sp.unk_id() not in packed.values                          # full character coverage


def test_a_vocabulary_smaller_than_the_alphabet_grows_to_hold_every_character(tmp_path,
                                                                              capsys):
    """Real Chinese has thousands of characters; a recipe's small vocabulary (hw5_cpu: 1000)
    must not stop the run: every character gets a piece and the asked pieces come on top."""
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + i) for i in range(600)]  # 600 distinct CJK characters
    zh = ["".join(rng.choice(alphabet) for _ in range(12)) for _ in range(3000)]
    en = [" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat"]) for _ in range(6))
          for _ in range(3000)]
    sp = mt.train_spm(en + zh, vocab_size=200, cache_dir=tmp_path)
    assert sp.get_piece_size() >= 600 + 4
    assert sp.unk_id() not in mt.pack(sp, zh[:200]).values     # no character lost
    err = capsys.readouterr().err
    assert "data.vocab_size=200 is below the" in err and "distinct characters" in err


@pytest.mark.parametrize("pieces,text", [
    ("我已经做作业了 。", "我已经做作业了。"),
    ("我 有 iPhone 12 , 你 呢 ?", "我有iPhone 12,你呢?"),
    ("汤姆 是 New York 人 。", "汤姆是New York人。"),
])
def test_chinese_is_written_without_the_spaces_of_cleaning(pieces, text):
    assert mt.join_zh(pieces) == text
