"""scripts/bench/gpu_recipes.py on the CPU at tiny sizes: every variant of a recipe runs through
the engine, times exactly the updates asked for, and projects the full recipe from its rate."""

from __future__ import annotations

import importlib.util
import math
import sys

from tests.conftest import ROOT


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_recipes_runs_every_variant_and_projects_the_full_recipe(capsys):
    bench = load_bench("gpu_recipes")
    rows = bench.main(["--tiny", "--only", "hw8", "hw6-wgangp", "--warmup", "1", "--steps", "3"])
    printed = capsys.readouterr().out.splitlines()
    seen = {(r["recipe"], r["amp"], r["channels_last"]) for r in rows}
    assert seen == {("hw8", True, False), ("hw8", False, False), ("hw6-wgangp", True, True),
                    ("hw6-wgangp", True, False), ("hw6-wgangp", False, False)}
    assert len(printed) == len(rows)
    for row in rows:
        recipe = bench.RECIPES[row["recipe"]]
        assert row["device"] == "cpu" and row["batch"] == 4
        assert row["timed"] == 3                       # the updates after the warm-up
        assert math.isclose(row["items_s"], row["updates_s"] * 4)
        assert row["updates_s"] > 0 and 0 < row["load_share"] < 1 and row["eval_items_s"] > 0
        assert math.isnan(row["peak_mib"])             # no CUDA here: no peak is made up
        # at least the training half of the real items, every epoch, at the measured rate
        floor = row["epochs"] * recipe.real_items * 0.5 / row["items_s"] / 3600
        assert floor <= row["projected_h"] < float("inf")
