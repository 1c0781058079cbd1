"""scripts/bench/gpu_recipes.py on the CPU at tiny sizes: every variant of a recipe runs through
the engine, times exactly the updates asked for, and projects the full recipe from its rate."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the benchmarks' CPU smoke runs


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_recipes_runs_every_variant_and_projects_the_full_recipe(capsys):
    bench = load_bench("gpu_recipes")
    # AMP bf16 / fp16 / off for every recipe, channels_last beside bf16 for the image models
    names = {hw: {(v["amp"], v["channels_last"], v["compile"])
                  for v in bench.variants(bench.RECIPES[hw])} for hw in ("hw8", "hw6-wgangp")}
    assert names["hw8"] == {(amp, False, False) for amp in ("bf16", "fp16", "off")}
    assert names["hw6-wgangp"] == names["hw8"] | {("bf16", True, False)}
    rows = bench.main(["--tiny", "--only", "hw8", "hw6-wgangp", "--amp", "bf16",
                       "--warmup", "1", "--steps", "3"])
    printed = capsys.readouterr().out.splitlines()
    seen = {(r["recipe"], r["amp"], r["channels_last"]) for r in rows}
    assert seen == {("hw8", "bf16", False), ("hw6-wgangp", "bf16", True),
                    ("hw6-wgangp", "bf16", False)}
    assert len(printed) == len(rows)
    for row in rows:
        recipe = bench.RECIPES[row["recipe"]]
        assert row["device"] == "cpu" and row["batch"] == 4 and row["accum"] == 1
        assert row["timed"] == 3                       # the updates after the warm-up
        assert math.isclose(row["items_s"], row["updates_s"] * 4)
        assert row["updates_s"] > 0 and 0 < row["load_share"] < 1 and row["eval_items_s"] > 0
        assert math.isnan(row["peak_mib"])             # no CUDA here: no peak is made up
        # at least the training half of the real items, every epoch, at the measured rate
        floor = row["epochs"] * recipe.real_items * 0.5 / row["items_s"] / 3600
        assert floor <= row["projected_h"] < float("inf")


def test_gpu_sequences_runs_the_sequence_recipes_with_compile_and_decoding(capsys, tmp_path):
    bench = load_bench("gpu_sequences")
    rows = bench.main(["--tiny", "--only", "hw2", "hw5", "hw7-noaccum", "--amp", "bf16",
                       "--warmup", "1", "--steps", "3"])
    printed = capsys.readouterr().out.splitlines()
    # bf16 and bf16 + torch.compile for every sequence recipe; one decoding line a HW5 row
    assert {(r["recipe"], r["compile"]) for r in rows} == {
        (hw, c) for hw in ("hw2", "hw5", "hw7-noaccum") for c in (False, True)}
    assert len(printed) == len(rows) + 2
    for row in rows:
        recipe = bench.RECIPES[row["recipe"]]
        assert row["timed"] == 3 and row["updates_s"] > 0 and row["eval_items_s"] > 0
        assert row["accum"] == {"hw2": 1, "hw5": 2, "hw7-noaccum": 1}[row["recipe"]]
        # the real items are frames for HW2's tagger, whose loader items are utterances
        rate = row["counted_s"] if recipe.counted == "frames" else row["items_s"]
        floor = row["epochs"] * recipe.real_items * 0.5 / rate / 3600
        assert floor <= row["projected_h"] < float("inf")
        if row["recipe"] == "hw5":   # token budgets: many target tokens a sentence
            assert row["counted_s"] > 5 * row["items_s"]
            assert row["decoded"] == 16 and row["decode_cached_s"] > 0
            assert row["decode_uncached_s"] > 0
        else:                        # HW2 utterances and HW7 windows: batches of 4 rows
            assert math.isclose(row["items_s"], row["updates_s"] * 4)
        if row["recipe"] == "hw2":   # whole utterances: hundreds of frames each
            assert row["counted_s"] > 100 * row["items_s"]
    # HW7's joined paragraphs keep every answer where its offsets say
    data = bench.joined_paragraphs(tmp_path / "qa", tiny=True)
    doc = json.loads((data / "hw7_train.json").read_text(encoding="utf-8"))
    assert len(doc["paragraphs"]) == 20
    for q in doc["questions"]:
        text = doc["paragraphs"][q["paragraph_id"]]
        assert text[q["answer_start"]:q["answer_end"] + 1] == q["answer_text"]
