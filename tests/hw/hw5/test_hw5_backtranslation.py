"""HW5 beyond one run: back-translation end to end on the demo (a zh-en run, `backtranslate`
with beam or seeded sampling, an en-zh run on real + synthetic pairs with the real ones
up-sampled), the report's figures, the course's RNN recipe, and the errors of each."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from common.core.config import load_config
from common.engine.plots import read_steps
from common.experiments.pipeline import prepare
from hw.cli import main as cli_main
from hw.hw5_translate import data as mt
from hw.hw5_translate.model import Seq2SeqRNN
from hw.hw5_translate.task import TranslationTask
from tests.helpers import ROOT, train_in_process

CPU = str(ROOT / "configs" / "hw5_cpu.toml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return mt.write_demo_data(tmp_path_factory.mktemp("hw5bt"))


def train(demo, out, *sets, dry=False):
    return train_in_process("hw5", demo, out, CPU, *sets, cache="spm", dry=dry)


@pytest.fixture(scope="module")
def backward(demo, tmp_path_factory):
    """A zh-en Transformer trained for 6 epochs on the demo (greedy validation)."""
    out = tmp_path_factory.mktemp("hw5back") / "back"
    assert train(demo, out, 'data.direction="zh-en"', "trainer.epochs=6", "model.beam=1") == 0
    return out


def best_bleu(run) -> float:
    return max(float(v) for v in read_steps(run / "metrics.csv")["valid_bleu"])


@pytest.mark.slow
def test_backtranslation_end_to_end(demo, backward, tmp_path, capsys):
    assert best_bleu(backward) > 30  # a backward model that reads, not noise
    assert cli_main(["hw5", "backtranslate", "--run", str(backward), "--limit", "500"]) == 0
    out = backward / "backtranslation"
    en = mt.read_lines(out / "synthetic.en")
    zh = mt.read_lines(out / "synthetic.zh")
    mono = [mt.clean_zh(s) for s in mt.read_lines(demo / mt.MONO_NAME)][:500]
    assert 450 <= len(en) == len(zh) <= 500
    assert all(mt.clean_en(s) == s and s for s in en)  # cleaned like real English
    it = iter(mono)
    assert all(any(z == m for m in it) for z in zh)     # the mono lines, in order
    # translations, not copies: the English side is mostly Latin letters
    assert np.mean([bool(re.fullmatch(r"[a-z .,]+", s)) for s in en]) > 0.9

    # en-zh on real (twice) + synthetic pairs; validation on real pairs only
    run = tmp_path / "fwd"
    code = train(demo, run, f'data.synthetic="{out}"', "data.real_upsample=2", dry=True)
    assert code == 0
    lines = (run / "prediction.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300
    config = load_config(TranslationTask.schema(), run / "config.toml",
                         [f'data.cache_dir="{tmp_path / "spm"}"'])
    task, data, (train_idx, valid_idx) = prepare(TranslationTask, config, demo)
    train_ds, valid_ds = task.make_datasets(data, train_idx, valid_idx)
    assert len(train_ds) == 2 * len(train_idx) + len(en) and data.n_real == 6000
    assert len(valid_ds) == len(valid_idx) and valid_ds.rows.max() < data.n_real
    assert f"{len(train_ds)} train / {len(valid_idx)} valid" in (run / "log.txt").read_text()
    last = train_ds[np.array([len(train_ds) - 1])]
    assert task.sp.decode(last["tgt_out"][0, :-1].tolist()) == task.sp.decode(
        task.sp.encode(zh[-1]))


@pytest.mark.slow
def test_sampled_backtranslation_is_seeded_and_differs_from_beam(backward, tmp_path):
    outs = {}
    for name, extra in (("beam", []), ("a", ["--sample"]), ("b", ["--sample"])):
        assert cli_main(["hw5", "backtranslate", "--run", str(backward), "--limit", "120",
                         "--out", str(tmp_path / name), *extra]) == 0
        outs[name] = (tmp_path / name / "synthetic.en").read_text(encoding="utf-8")
    assert outs["a"] == outs["b"] and outs["a"] != outs["beam"]


@pytest.mark.slow
def test_report_figures_and_rnn_errors(demo, backward, tmp_path, capsys):
    assert cli_main(["hw5", "report", "--run", str(backward), "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    for name in ("report_positions.png", "report_grad_norm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    norms = read_steps(backward / "steps.csv")["grad_norm"]
    assert f"{len(norms)} updates, {int((norms > 1.0).sum())} above 1 " in said

    rnn = tmp_path / "rnn"  # the course's RNN, tiny, en-zh: no positions, no back-translation
    assert train(demo, rnn, 'model.arch="rnn"', "model.rnn_hidden=32", "model.d_model=32",
                 dry=True) == 0
    capsys.readouterr()
    for argv, expected in (
            (["report", "--run", str(rnn)], "rnn model has no positional embeddings"),
            (["backtranslate", "--run", str(rnn)], "needs a zh-en run"),
            (["backtranslate", "--run", str(backward), "--mono", str(tmp_path / "none.zh")],
             "none.zh: missing")):
        assert cli_main(["hw5", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    code = train(demo, tmp_path / "nosyn", f'data.synthetic="{tmp_path / "nothing"}"', dry=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hw5 backtranslate" in err[0], err
    assert not (tmp_path / "nosyn").exists()


def test_sample_config_is_the_course_rnn(tmp_path):
    config = load_config(TranslationTask.schema(), ROOT / "configs" / "hw5_sample.toml")
    assert config["predict"].average == 5 and config["trainer"].keep_checkpoints == 5
    model = Seq2SeqRNN(8000, embed=config["model"].d_model, hidden=config["model"].rnn_hidden,
                       dropout=config["model"].dropout)
    assert model.encoder.bidirectional and model.encoder.hidden_size == 512
    assert model.decoder.hidden_size == 1024 and model.embed.embedding_dim == 256
    src = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    assert model(src, torch.tensor([[2, 5], [2, 6]])).shape == (2, 2, 8000)
