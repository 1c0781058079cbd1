"""HW7 extractive QA: the reader's errors, windows that map back to the real test paragraphs by
offsets, gold spans that come back as exact text, training windows that hold the answer at a
seeded random place, the span check, an offline small BERT that learns the demo, span-level
ensembles and the error for a model that cannot be loaded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from common.core.config import load_config
from common.core.errors import UserError
from common.engine.checkpoint import load_checkpoint, prediction_weights
from common.engine.fusion import fuse
from common.engine.rundir import RunDir
from common.experiments.pipeline import make_trainer, prepare, train_run
from common.experiments.submission import validate_submission
from hw.cli import main as cli_main
from hw.hw7_qa import data as qadata
from hw.hw7_qa import windows as win
from hw.hw7_qa.task import QATask
from tests.helpers import ROOT, SHARED

REAL_TEST = SHARED / "hw7" / "2022" / "hw7_test.json"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return qadata.write_demo_data(tmp_path_factory.mktemp("hw7demo"))


def config(demo, name="hw7_cpu", overrides=()):
    return load_config(QATask.schema(), ROOT / "configs" / f"{name}.toml", [
        f'data.dir="{demo}"', "trainer.device=\"cpu\"", "trainer.print_every_evals=1000",
        *overrides])


def test_demo_follows_the_course_schema(demo):
    test = json.loads((demo / "hw7_test.json").read_text())
    assert set(test) == {"questions", "paragraphs"}
    assert {q["answer_text"] for q in test["questions"]} == {None, "null"}
    assert [q["id"] for q in test["questions"]] == list(range(len(test["questions"])))
    dev = qadata.load(demo, "dev")
    for i in range(len(dev)):  # answer_end inclusive, as in the real files
        assert dev.context(i)[dev.starts[i]:dev.ends[i]] == dev.answers[i]
    key = pd.read_csv(demo / qadata.DEMO_ANSWERS)
    assert list(key.columns) == ["ID", "Answer"] and len(key) == len(test["questions"])


BAD = [
    ("not json", "{", "not valid JSON"),
    ("no lists", {"questions": {}}, 'lists "questions" and "paragraphs"'),
    ("paragraph id", {"paragraphs": ["甲乙"], "questions": [
        {"id": 5, "paragraph_id": 3, "question_text": "?", "answer_text": "甲",
         "answer_start": 0, "answer_end": 0}]}, "question id 5: paragraph_id 3 outside 0..0"),
    ("slice", {"paragraphs": ["甲乙丙"], "questions": [
        {"id": 7, "paragraph_id": 0, "question_text": "?", "answer_text": "乙丙",
         "answer_start": 1, "answer_end": 1}]}, "question id 7: paragraph[1:1+1] is not"),
    ("missing field", {"paragraphs": ["甲"], "questions": [
        {"id": 8, "paragraph_id": 0}]}, "question id 8: question_text missing"),
]


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_reader_errors_name_the_file_and_question(tmp_path, name, content, message):
    path = tmp_path / "hw7_dev.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as err:
        qadata.read_split(path, labelled=True)
    assert str(path) in str(err.value) and message in str(err.value)


def test_exclusive_end_and_answered_test_files_are_refused(tmp_path, demo):
    dev = json.loads((demo / "hw7_dev.json").read_text())
    dev["questions"][0]["answer_end"] += 1            # as if answer_end were exclusive
    (tmp_path / "hw7_dev.json").write_text(json.dumps(dev))
    with pytest.raises(UserError, match="inclusive"):
        qadata.read_split(tmp_path / "hw7_dev.json", labelled=True)
    (tmp_path / "t").mkdir()
    shutil.copy(demo / "hw7_dev.json", tmp_path / "t" / "hw7_test.json")
    with pytest.raises(UserError, match="is this the dev file"):
        qadata.load(tmp_path / "t", "test")


def test_cli_reports_a_bad_file_in_one_line(tmp_path, demo, capsys):
    data = tmp_path / "data" / "hw7_data"  # one level down, as an unzip gives
    shutil.copytree(demo, data)
    (data / "hw7_train.json").write_text('{"questions": [], "paragraphs": [3]}')
    code = cli_main(["hw7", "train", "--data", str(tmp_path / "data"), "--config",
                     str(ROOT / "configs" / "hw7_cpu.toml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hw7_train.json: paragraph 0 is int" in err[0]


@pytest.mark.slow
def test_windows_map_back_to_the_real_paragraphs_and_gold_spans_come_back_exactly():
    if not REAL_TEST.is_file():
        pytest.skip("real HW7 test file (../shared/data/hw7/2022) not present")
    qa = qadata.load(REAL_TEST.parent, "test")
    assert len(qa) == 4957
    tok = win.char_tokenizer(win.char_vocab(qa.paragraphs + qa.questions, min_freq=2))
    rows = np.arange(0, len(qa), 7)
    windows = win.EvalWindows(qa, rows, tok, max_length=160, doc_stride=64, max_question=32)
    assert len(windows) > 2 * len(rows)
    unk = tok.unk_token_id
    for w in range(len(windows)):
        ctx = np.flatnonzero(windows.context_mask[w].numpy())
        para = qa.context(rows[windows.question[w]])
        off = windows.offsets[w, ctx]
        assert (off[:, 0] < off[:, 1]).all() and (off[1:, 0] >= off[:-1, 1]).all()
        for t, (a, b) in zip(ctx, off, strict=True):
            piece = tok.convert_ids_to_tokens(int(windows.input_ids[w, t]))
            if int(windows.input_ids[w, t]) != unk:
                assert piece.removeprefix("##") == para[a:b]
    # a gold span per window (a random run of its context tokens) scored as the only
    # candidate comes back as exactly that text of the original paragraph
    rng = np.random.default_rng(0)
    pred = {k: [] for k in ("s_val", "s_idx", "e_val", "e_idx")}
    gold = {}
    for w in range(len(windows)):
        ctx = np.flatnonzero(windows.context_mask[w].numpy())
        s = int(rng.integers(0, len(ctx)))
        e = min(len(ctx) - 1, s + int(rng.integers(0, 10)))
        q = int(windows.question[w])
        score = float(rng.random()) + 10.0
        pred["s_val"].append([score, -np.inf])
        pred["s_idx"].append([ctx[s], 0])
        pred["e_val"].append([score, -np.inf])
        pred["e_idx"].append([ctx[e], 0])
        a, b = windows.offsets[w, ctx[s], 0], windows.offsets[w, ctx[e], 1]
        if score > gold.get(q, (-1, ""))[0]:
            gold[q] = (score, qa.context(rows[q])[a:b])
    pred = {k: torch.tensor(v, dtype=torch.float if "val" in k else torch.long)
            for k, v in pred.items()}
    spans = win.best_spans(pred, windows, max_answer=30, keep=5)
    texts = win.answers(spans, qa, rows)
    assert texts == [gold[q][1] for q in range(len(rows))]
    assert all(t and t in qa.context(r) for t, r in zip(texts, rows, strict=True))


def test_training_windows_hold_the_answer_at_a_seeded_random_place(demo):
    task, data, _ = prepare(QATask, config(demo, overrides=["data.negatives=0.5"]), demo)
    rows = np.arange(task.n_train)
    kw = dict(max_length=64, max_question=16)
    train = win.TrainWindows(data, rows, task.tokenizer, seed=3, negatives=0.5, **kw)
    n = len(train.items)
    assert len(train) == n + round(0.5 * n) and train.skipped == 0
    idx = torch.arange(len(train))
    first = train[idx]
    tok = task.tokenizer
    starts = []
    for i in range(n):
        s, e = int(first["start_positions"][i]), int(first["end_positions"][i])
        assert tok.decode(first["input_ids"][i, s:e + 1]).replace(" ", "") == \
            data.answers[i].replace(" ", "")
        starts.append(s)
    negatives = first["start_positions"][n:]
    assert (negatives == 0).all() and (first["end_positions"][n:] == 0).all()
    assert first["input_ids"].shape[1] <= 64
    assert torch.equal(train[idx[:50]]["input_ids"], first["input_ids"][:50, :train[idx[:50]]
                                                                        ["input_ids"].shape[1]])
    assert np.std(starts) > 5                      # the answer is not always in one place
    train.set_epoch(1)
    moved = train[idx]["start_positions"][:n]
    assert (moved != first["start_positions"][:n]).float().mean() > 0.5
    centred = win.TrainWindows(data, rows, task.tokenizer, centred=True, **kw)
    batch = centred[torch.arange(n)]
    mid = (batch["start_positions"] + batch["end_positions"]) / 2
    ctx_mid = (batch["attention_mask"].sum(1) + batch["token_type_ids"].argmax(1)) / 2
    assert (mid - ctx_mid).abs().float().median() <= 2


def spans_line(args, capsys):
    assert cli_main(["hw7", "spans", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_span_check_is_complete_with_overlap_and_not_without(demo, capsys):
    cpu = str(ROOT / "configs" / "hw7_cpu.toml")
    full = spans_line(["--data", str(demo), "--config", cpu], capsys)
    assert full.startswith("spans: ") and full.endswith("recoverable (100.00%)")
    cut = spans_line(["--data", str(demo), "--config", cpu, "--set", "data.doc_stride=0",
                      "--set", "data.max_length=64"], capsys)
    found, total = map(int, cut.split()[1].split("/"))
    assert 0 < found < total and full.split()[1].endswith(f"/{total}")


@pytest.mark.slow
def test_small_bert_learns_the_demo_and_the_best_span_rule_beats_the_naive_one(demo, tmp_path):
    # 3 epochs of a 2-layer BERT over 128-token windows: dev EM about 0.19 against 0.10 naive
    cfg = config(demo, overrides=["trainer.epochs=3", "model.layers=2", "data.max_length=128",
                                  "data.doc_stride=48"])
    result = train_run(QATask, cfg, tmp_path / "run")
    assert validate_submission(result["submission"], qadata.HEADER, range(300)) is not None
    state = load_checkpoint(RunDir(tmp_path / "run").checkpoint("best"))
    task, data, _ = prepare(QATask, cfg, demo)
    dev = task.labelled_dataset(data, np.arange(task.n_train, len(data)))
    model = task.build_model()
    model.load_state_dict(prediction_weights(state))
    trainer = make_trainer(task, model, None)
    best = trainer.evaluate(dev)["em"]
    task.config["model"] = type(cfg["model"])(**{**vars(cfg["model"]), "postprocess": "naive"})
    naive = trainer.evaluate(dev)["em"]
    common = pd.Series(data.answers[:task.n_train]).value_counts().index[0]
    trivial = float(np.mean([a == common for a in data.answers[task.n_train:]]))
    print(f"dev EM: best-span {best:.3f}, naive {naive:.3f}, most common answer {trivial:.3f}")
    assert best > trivial + 0.1 and best > naive + 0.03


def test_a_span_level_ensemble_of_two_runs_writes_a_valid_result(demo, tmp_path):
    quick = ["--dry-run", "--set", "model.layers=1", "--set", "model.hidden=32", "--set",
             "model.ff_dim=64", "--set", "trainer.device=\"cpu\""]
    cpu = str(ROOT / "configs" / "hw7_cpu.toml")
    for k, extra in ((1, []), (2, ["--set", "data.max_length=96", "--set",
                                   "data.doc_stride=32"])):
        assert cli_main(["hw7", "train", "--data", str(demo), "--config", cpu, "--out",
                         str(tmp_path / f"r{k}"), *quick, *extra]) == 0
    assert cli_main(["hw7", "ensemble", str(tmp_path / "r1"), str(tmp_path / "r2"), "--out",
                     str(tmp_path / "ens")]) == 0
    frame = validate_submission(tmp_path / "ens" / "result.csv", qadata.HEADER, range(300))
    test = qadata.load(demo, "test")
    members = [torch.load(tmp_path / f"r{k}" / "test_outputs.pt", weights_only=False)
               for k in (1, 2)]
    assert all(m["kind"] == "spans" and len(m["outputs"]) == len(test) for m in members)
    fused = fuse([m["outputs"] for m in members], kind="spans")
    best = [max(f, key=f.get) for f in fused]
    assert frame["Answer"].fillna("").tolist() == [
        test.context(k)[a:b].replace(",", "") for k, (a, b) in enumerate(best)]
    for k, answer in enumerate(frame["Answer"].fillna("")):
        assert answer in test.context(k).replace(",", "") and "," not in answer


def test_a_model_that_cannot_be_loaded_gives_one_line(demo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = QATask(config(demo, overrides=['model.name="no-such-org/no-such-model"']))
    with pytest.raises(UserError) as err:
        task.build_model()
    message = str(err.value)
    assert "no-such-org/no-such-model" in message and "huggingface-cli download" in message
    assert "\n" not in message


def test_layer_decay_numbers_the_bert_layers(demo):
    task, _, _ = prepare(QATask, config(demo, overrides=["optim.layer_decay=0.5",
                                                         "model.layers=2"]), demo)
    model = task.build_model()
    # the layer count comes from the model it is given, not from an earlier build_model
    fresh = task.for_config(task.config)
    spec = fresh.configure_optimizers(model, task.config["optim"], task.config["sched"])["main"]
    scale = {id(p): g["lr_scale"] for g in spec.params for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["bert.embeddings.word_embeddings.weight"])] == 0.5 ** 3
    assert scale[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.5 ** 2
    assert scale[id(named["bert.encoder.layer.1.output.dense.weight"])] == 0.5
    assert scale[id(named["qa_outputs.weight"])] == 1.0


def test_best_span_rule_skips_what_the_naive_rule_falls_for(demo):
    task, data, _ = prepare(QATask, config(demo, overrides=["data.max_length=64",
                                                            "data.doc_stride=16"]), demo)
    row = task.n_train                                  # the first dev question
    windows = task.labelled_dataset(data, [row])
    w = int(np.flatnonzero(windows.targets[:, 0] > 0)[0])  # a window holding the answer
    batch = windows[[w]]
    ctx = np.flatnonzero(batch["context_mask"][0].numpy())
    s, e = (int(x) for x in windows.targets[w])
    assert s > ctx[0]
    start = torch.full(batch["input_ids"].shape, -5.0)
    end = torch.full(batch["input_ids"].shape, -5.0)
    start[0, 1] = 9.0                     # a question token: the naive rule takes it
    end[0, ctx[0]] = 8.0                  # an end before the true start
    start[0, s], end[0, e] = 6.0, 6.0     # the answer, second best at each end
    pred = win.top_candidates(start, end, batch, n_best=5)
    only = EvalWindowsView(windows, w)
    naive = win.answers(win.naive_spans(pred, only, task.tokenizer), data, [row])
    best = win.answers(win.best_spans(pred, only, max_answer=30, keep=3), data, [row])
    assert best == [data.answers[row]]
    assert naive != best


class EvalWindowsView:
    """One window of an EvalWindows, as postprocessing sees it."""

    def __init__(self, windows, w):
        self.rows, self.question = windows.rows, windows.question[[w]]
        self.offsets, self.input_ids = windows.offsets[[w]], windows.input_ids[[w]]


def test_an_unreachable_hub_is_one_line_without_the_librarys_retries(monkeypatch, tmp_path):
    """The local cache first; then one quick connection to the hub; when that fails the
    library's own (minute-long, retried) download is never started."""
    import time

    from hw.hw7_qa import model as qa_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(qa_model, "HUB_HOST", ("127.0.0.1", 9))   # refused at once
    calls = []

    def loader(name, **kw):
        calls.append(kw)
        raise OSError(f"{name} is not cached")

    start = time.perf_counter()
    with pytest.raises(UserError, match="not in the local cache, and 127.0.0.1 cannot be"):
        qa_model.hf_load(loader, "some-org/some-model")
    assert calls == [{"local_files_only": True}] and time.perf_counter() - start < 5
    folder = tmp_path / "my-model"                      # a local folder: loaded as it is
    folder.mkdir()
    assert qa_model.hf_load(lambda name, **kw: (name, kw), str(folder)) == (str(folder), {})


def test_a_json_file_with_a_byte_order_mark_is_read(tmp_path):
    if not REAL_TEST.is_file():
        pytest.skip("real HW7 test file (../shared/data/hw7/2022) not present")
    (tmp_path / REAL_TEST.name).write_bytes(b"\xef\xbb\xbf" + REAL_TEST.read_bytes())
    assert len(qadata.load(tmp_path, "test")) == 4957
