"""HW7 files: hw7_train.json, hw7_dev.json, hw7_test.json (one JSON object each: "questions",
"paragraphs"), read with validation; and synthetic demo data in the same schema.

`answer_end` is inclusive: paragraph[answer_start:answer_end + 1] == answer_text (verified on
the real dev file). Test answers are null (the first 3,493) or the string "null" (the rest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.core.errors import UserError
from common.core.io import read_text, write_csv_atomic, write_text_atomic
from common.data.loading import find_root_or_child

FILES = {"train": "hw7_train.json", "dev": "hw7_dev.json", "test": "hw7_test.json"}
DEMO_ANSWERS = "demo_test_answers.csv"
HEADER = ("ID", "Answer")


@dataclass
class QASet:
    """One file: its paragraphs and questions, with character answer spans [start, end)
    when labelled (end exclusive here, unlike the file)."""

    path: Path
    paragraphs: list[str]
    ids: list[int]
    paragraph_ids: np.ndarray
    questions: list[str]
    answers: list[str] | None
    starts: np.ndarray | None
    ends: np.ndarray | None
    n_train: int = 0         # train and dev joined: the first n_train questions are train's
    n_train_paragraphs: int = 0   # ... and the first n_train_paragraphs paragraphs

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def labelled(self) -> bool:
        return self.answers is not None

    def context(self, i: int) -> str:
        return self.paragraphs[int(self.paragraph_ids[i])]


def find_root(data_dir: str | Path) -> Path:
    """The folder with the three files: data_dir itself or one level down."""
    return find_root_or_child(
        data_dir, (FILES["test"], FILES["train"]),
        f"no {FILES['train']} or {FILES['test']} here or one level down",
        hint="point --data at the folder of hw7_data.zip")


def _fail(path: Path, qid, why: str):
    where = f"question id {qid}: " if qid is not None else ""
    raise UserError(f"{path}: {where}{why}; download hw7_data.zip again or fix that entry")


def read_split(path: Path, *, labelled: bool) -> QASet:
    """Read and validate one file. labelled: answers must slice out of their paragraph; else
    the answer fields must be null or "null"."""
    if not path.is_file():
        raise UserError(f"{path}: missing; hw7_data.zip holds {', '.join(FILES.values())}")
    try:
        raw = json.loads(read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); download hw7_data.zip again") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list) or \
            not isinstance(raw.get("paragraphs"), list):
        _fail(path, None, 'expected one object with lists "questions" and "paragraphs"')
    paragraphs = raw["paragraphs"]
    for k, p in enumerate(paragraphs):
        if not isinstance(p, str):
            _fail(path, None, f"paragraph {k} is {type(p).__name__}, not a string")
    ids, pids, texts, answers, starts, ends = [], [], [], [], [], []
    for n, q in enumerate(raw["questions"]):
        qid = q.get("id", f"#{n}") if isinstance(q, dict) else f"#{n}"
        if not isinstance(q, dict):
            _fail(path, qid, "not an object")
        for key, kind in (("id", int), ("paragraph_id", int), ("question_text", str)):
            if not isinstance(q.get(key), kind) or isinstance(q.get(key), bool):
                _fail(path, qid, f"{key} missing or not {kind.__name__}")
        if not 0 <= q["paragraph_id"] < len(paragraphs):
            _fail(path, qid, f"paragraph_id {q['paragraph_id']} outside 0..{len(paragraphs) - 1}")
        ids.append(q["id"])
        pids.append(q["paragraph_id"])
        texts.append(q["question_text"])
        fields = [q.get(k) for k in ("answer_text", "answer_start", "answer_end")]
        if not labelled:
            if any(f not in (None, "null") for f in fields):
                _fail(path, qid, f"a test question with an answer {fields}; is this the dev "
                      "file?")
            continue
        text, start, end = fields
        if not isinstance(text, str) or not isinstance(start, int) or not isinstance(end, int):
            _fail(path, qid, "answer_text, answer_start and answer_end must be a string and "
                  "two ints")
        if paragraphs[q["paragraph_id"]][start:end + 1] != text or not text:
            _fail(path, qid, f"paragraph[{start}:{end}+1] is not the answer {text!r} "
                  "(answer_end is the last character, inclusive)")
        answers.append(text)
        starts.append(start)
        ends.append(end + 1)
    if len(set(ids)) != len(ids):
        _fail(path, None, "question ids are not unique")
    return QASet(path, paragraphs, ids, np.asarray(pids, dtype=np.int64), texts,
                 answers if labelled else None,
                 np.asarray(starts, dtype=np.int64) if labelled else None,
                 np.asarray(ends, dtype=np.int64) if labelled else None)


def load(data_dir: str | Path, split: str) -> QASet:
    return read_split(find_root(data_dir) / FILES[split], labelled=split != "test")


def clean_answer(text: str) -> str:
    """Kaggle's answers have their commas removed (the file is comma-separated)."""
    return text.replace(",", "")


# --------------------------------------------------------------------------- demo data
SURNAMES = ("陳林黃張李王吳劉蔡楊許鄭謝郭洪曾邱廖賴周徐蘇葉莊呂江何蕭"
            "羅高朱鍾游彭詹胡施沈余趙盧梁顏柯孫魏")
GIVEN = ("志明俊傑淑芬美玲建宏家豪雅婷怡君宗翰冠宇承恩柏翰品妤欣怡詩涵佳穎思妤子軒宥廷彥廷"
         "文雄秀英春嬌阿土金水永福國華振興德成瑞麟鶴齡蘊璞琮瑄翊瑋璟曦晅旻昶暐燁煒焜熠")
PLACE = "臺南高雄嘉義彰化新竹苗栗宜蘭花蓮屏東基隆桃園雲林南投澎湖金門淡水鹿港安平北投"
PLACE_KIND = ("港", "鎮", "村", "山", "島", "溪")
ORG_KIND = ("書院", "醫院", "學堂", "商會", "報社", "藥局", "銀行", "學會", "博物館", "茶行")
ROLES = ("院長", "社長", "主席", "館長", "校長", "總經理")
GOODS = ("茶葉", "樟腦", "稻米", "蔗糖", "煤炭", "藥材", "書籍", "布匹")
FILLER = ("當地居民至今仍常提起這段往事。", "此事在當時的報紙上曾有詳細記載。",
          "後來的研究者對此有不同的看法。", "這段歷史也反映了當時社會的變遷。",
          "附近的街道因此變得十分熱鬧。")


def _pick(rng, pool: str, n: int) -> str:
    return "".join(pool[int(i)] for i in rng.integers(0, len(pool), n))


def _person(rng) -> str:
    """A surname and two given-name characters; one in four names has a rare character (any
    CJK ideograph), which a vocabulary from the training file will mostly lack."""
    given = _pick(rng, GIVEN, 2)
    if rng.random() < 0.25:
        given = given[0] + chr(int(rng.integers(0x4E00, 0x9FA6)))
    return _pick(rng, SURNAMES, 1) + given


def _entity_facts(rng) -> tuple[list[str], list[tuple[str, str]]]:
    """Sentences about one organisation and (question, answer) pairs about them."""
    org = _pick(rng, PLACE, 2) + ORG_KIND[int(rng.integers(len(ORG_KIND)))]
    founder, leader = _person(rng), _person(rng)
    place = _pick(rng, PLACE, 2) + PLACE_KIND[int(rng.integers(len(PLACE_KIND)))]
    year = int(rng.integers(1700, 1990))
    later = year + int(rng.integers(3, 30))
    count = int(rng.integers(12, 3000))
    role = ROLES[int(rng.integers(len(ROLES)))]
    goods = GOODS[int(rng.integers(len(GOODS)))]
    sentences = [
        (f"{org}位於{place}，由{founder}於{year}年創立。",
         [(f"{org}是由誰創立的？", founder), (f"{org}創立於哪一年？", f"{year}年"),
          (f"{org}位於哪裡？", place)]),
        (f"{later}年，{leader}出任{org}的{role}。",
         [(f"{later}年誰出任{org}的{role}？", leader), (f"{leader}在哪一年出任{role}？",
                                                   f"{later}年")]),
        (f"全盛時期的{org}共有{count}名成員，主要經營{goods}的買賣。",
         [(f"全盛時期的{org}共有多少名成員？", f"{count}名"),
          (f"{org}主要經營什麼的買賣？", goods)]),
    ]
    text, pairs = [], []
    for sentence, qa in sentences:
        text.append(sentence)
        pairs.extend(qa)
        if rng.random() < 0.4:
            text.append(FILLER[int(rng.integers(len(FILLER)))])
    return text, pairs


def demo_split(rng, paragraphs: int, per_paragraph: int) -> tuple[list[str], list[dict]]:
    """Paragraphs of two or three organisations' facts (about 140-330 characters) and
    questions whose answers occur exactly once in their paragraph."""
    texts, questions = [], []
    for pid in range(paragraphs):
        parts, pairs = [], []
        for _ in range(int(rng.integers(2, 4))):
            text, qa = _entity_facts(rng)
            parts.extend(text)
            pairs.extend(qa)
        paragraph = "".join(parts)
        pairs = [(q, a) for q, a in pairs if paragraph.count(a) == 1]
        chosen = rng.choice(len(pairs), min(per_paragraph, len(pairs)), replace=False)
        for k in sorted(chosen):
            q, a = pairs[int(k)]
            start = paragraph.index(a)
            questions.append({"paragraph_id": pid, "question_text": q, "answer_text": a,
                              "answer_start": start, "answer_end": start + len(a) - 1})
        texts.append(paragraph)
    return texts, questions


def write_demo_data(dest: Path, sizes=(("train", 500, 5), ("dev", 60, 5), ("test", 60, 5)),
                    seed: int = 7) -> Path:
    """hw7_train.json, hw7_dev.json, hw7_test.json (answers null, as the course's) and the test
    answer key demo_test_answers.csv, deterministic from the seed."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    next_id = 0
    for split, paragraphs, per in sizes:
        texts, questions = demo_split(rng, paragraphs, per)
        for k, q in enumerate(questions):  # test ids are 0..n-1 in file order, as the course's
            q["id"] = k if split == "test" else next_id + k
        next_id += len(questions)
        if split == "test":
            write_csv_atomic(dest / DEMO_ANSWERS, HEADER,
                             [(q["id"], clean_answer(q["answer_text"])) for q in questions])
            for k, q in enumerate(questions):
                for field in ("answer_text", "answer_start", "answer_end"):
                    q[field] = None if k % 2 else "null"
        write_text_atomic(dest / FILES[split],
                          json.dumps({"questions": questions, "paragraphs": texts},
                                     ensure_ascii=False))
    return dest
