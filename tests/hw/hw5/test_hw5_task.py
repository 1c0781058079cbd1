"""HW5 end to end on the demo corpus: the Transformer learns the synthetic grammar far beyond
copying the source, beam search scores at least greedy, prediction.txt has one line per test
sentence in order; bad input files stop with one line."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu

from common.core.config import load_config
from common.engine.checkpoint import load_checkpoint, prediction_weights
from common.experiments.pipeline import prepare, train_run
from hw.cli import main as cli_main
from hw.hw5_translate import data as mt
from hw.hw5_translate.task import TranslationTask
from tests.helpers import ROOT, SHARED

TATOEBA = SHARED / "hw5" / "tatoeba"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return mt.write_demo_data(tmp_path_factory.mktemp("hw5demo"))


@pytest.mark.slow
def test_transformer_learns_the_demo_and_beam_is_at_least_greedy(demo, tmp_path):
    config = load_config(TranslationTask.schema(), ROOT / "configs" / "hw5_cpu.toml", [
        f'data.dir="{demo}"', f'data.cache_dir="{tmp_path / "cache"}"',
        'trainer.device="cpu"', "trainer.epochs=4", "trainer.print_every_evals=1000",
        "model.beam=1"])  # greedy while training and predicting (quicker); beam below
    result = train_run(TranslationTask, config, tmp_path / "run")
    lines = (tmp_path / "run" / "prediction.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 301 and all(lines[:-1])
    assert not any(" " in line for line in lines)  # written as Chinese is, not as pieces
    score = TranslationTask.demo_score(tmp_path / "run" / "prediction.txt", demo, config)["bleu"]
    sources = [mt.clean_en(s) for s in mt.read_lines(demo / "test" / "test.en")]
    refs = [mt.clean_zh(s) for s in mt.read_lines(demo / mt.DEMO_REFERENCES)]
    copy = sacrebleu.corpus_bleu(sources, [refs], tokenize="zh").score
    # about 40 after 4 epochs, +-1 between machines (SentencePiece trains with threads)
    assert result["best"] > 30 and score > copy + 30, (result["best"], score, copy)
    # beam against greedy on the held-out split, same weights
    task, data, (_, valid_idx) = prepare(TranslationTask, config, demo)
    valid = task.labelled_dataset(data, valid_idx)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    model = task.build_model()
    model.load_state_dict(prediction_weights(state))
    model.eval()
    batch = valid[np.arange(len(valid))]
    texts = {beam: task.finalize(task.translate(model, batch["src"], beam), valid)
             for beam in (1, 4)}
    bleu = {beam: task.metrics(t, None, valid)["bleu"] for beam, t in texts.items()}
    print(f"demo: valid BLEU beam 4 {bleu[4]:.2f}, greedy {bleu[1]:.2f}; test {score:.2f}, "
          f"copying the source {copy:.2f}")
    assert bleu[4] >= bleu[1] - 0.5


@pytest.mark.parametrize("case,expected", [
    ("mismatch", "raw.zh: 2 lines but raw.en has 3"),
    ("utf8", "raw.en: line 2 is not UTF-8 text"),
    ("no test", "no test/test.en or test.raw.en"),
])
def test_bad_inputs_stop_with_one_line(tmp_path, capsys, case, expected):
    data = tmp_path / "data"
    data.mkdir()
    (data / "raw.en").write_text("One.\nTwo.\nThree.\n")
    (data / "raw.zh").write_text("一。\n二。\n三。\n")
    (data / "test").mkdir()
    (data / "test" / "test.en").write_text("Four.\n")
    if case == "mismatch":
        (data / "raw.zh").write_text("一。\n二。\n")
    elif case == "utf8":
        (data / "raw.en").write_bytes(b"One.\n\xc3\x28\nThree.\n")
    else:
        (data / "test" / "test.en").unlink()
    code = cli_main(["hw5", "train", "--data", str(data), "--config",
                     str(ROOT / "configs" / "hw5_cpu.toml"), "--out", str(tmp_path / "run"),
                     "--set", f'data.cache_dir="{tmp_path / "c"}"'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_demo_score_takes_the_direction_from_the_config_it_is_given(demo, tmp_path):
    """The references themselves score BLEU 100 for an en-zh run; a zh-en run has no score
    (it translated the pseudo-reference); no config.toml is read from disk."""
    path = tmp_path / "prediction.txt"
    path.write_text("".join(mt.clean_zh(s) + "\n" for s in
                            mt.read_lines(demo / mt.DEMO_REFERENCES)), encoding="utf-8")
    schema = TranslationTask.schema()
    en_zh = load_config(schema, None, [f'data.dir="{demo}"'])
    zh_en = load_config(schema, None, [f'data.dir="{demo}"', 'data.direction="zh-en"'])
    assert TranslationTask.demo_score(path, demo, en_zh)["bleu"] == pytest.approx(100.0)
    assert TranslationTask.demo_score(path, demo, zh_en) is None


def test_an_empty_test_side_is_refused_before_training(demo, tmp_path, capsys):
    """The test side is read, and found empty, before any run folder exists."""
    import shutil

    from hw.cli import main

    data = tmp_path / "data"
    shutil.copytree(demo, data)
    test = next(data.rglob("test.en"))
    test.write_text("", encoding="utf-8")
    capsys.readouterr()
    code = main(["hw5", "train", "--data", str(data), "--dry-run", "--out", str(tmp_path / "r"),
                 "--set", f'data.cache_dir="{tmp_path / "cache"}"'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{test}: empty" in err[0], err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_short_run_on_real_tatoeba_pairs_beats_the_unigram_model(tmp_path):
    """Real Chinese (thousands of characters) through hw5_cpu's own 1000-piece vocabulary: the
    run does not stop, and a tiny Transformer trained briefly on 4000 real pairs predicts the
    held-out targets far better than their piece frequencies alone (a model blind to the
    source and to the words before)."""
    if not (TATOEBA / "train_dev.raw.zh").is_file():
        pytest.skip("real HW5 proxy pairs (../shared/data/hw5/tatoeba) not present")
    data = tmp_path / "tatoeba"
    data.mkdir()
    for name, count in (("train_dev.raw.en", 4000), ("train_dev.raw.zh", 4000),
                        ("test.raw.en", 40), ("test.raw.zh", 40)):
        head = mt.read_lines(TATOEBA / name)[:count]
        (data / name).write_text("".join(line + "\n" for line in head), encoding="utf-8")
    config = load_config(TranslationTask.schema(), ROOT / "configs" / "hw5_cpu.toml", [
        f'data.dir="{data}"', f'data.cache_dir="{tmp_path / "cache"}"', "data.valid_ratio=0.05",
        'trainer.device="cpu"', "trainer.print_every_evals=1000",
        "model.d_model=64", "model.ff_dim=128", "model.enc_layers=1", "model.dec_layers=1",
        "model.label_smoothing=0", "model.beam=1", "sched.warmup_steps=20",
        "data.max_tokens=1024", "trainer.epochs=4"])
    result = train_run(TranslationTask, config, tmp_path / "run")
    task, bitext, (train_idx, valid_idx) = prepare(TranslationTask, config, data)
    assert task.sp.get_piece_size() > 1000    # grew to hold every character
    counts = np.ones(task.sp.get_piece_size())                      # add-one smoothing
    for r in train_idx:
        np.add.at(counts, bitext.tgt[r], 1)
    counts[mt_eos(task)] += len(train_idx)
    logp = np.log(counts / counts.sum())
    unigram = -np.mean(np.concatenate([np.append(logp[bitext.tgt[r]], logp[mt_eos(task)])
                                       for r in valid_idx]))
    valid_loss = min(row["valid_loss"] for row in result["trainer"].state.history)
    assert valid_loss < 0.85 * unigram, (valid_loss, unigram)
    lines = (tmp_path / "run" / "prediction.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 and not any(" 。" in line for line in lines)


def mt_eos(task) -> int:
    return task.sp.eos_id()
