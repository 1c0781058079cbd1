"""The CUDA path where a GPU is (skipped elsewhere): a HW5 run killed and resumed on CUDA ends
within the stated tolerance of the straight run (cuDNN and the atomics of embedding backward are
not deterministic there; the engine leaves cudnn.benchmark and deterministic at PyTorch's
defaults), and HW8's `predict` on CUDA gives the CPU's submission within float tolerance.
`MLHW_TEST_DEVICE=cpu pytest tests/common/test_cuda.py` runs the same checks on the CPU (where they
hold exactly) to test the tests."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from hw.hw5_translate import data as mt
from hw.hw8_anomaly import data as faces
from tests.common.test_resume import kill_and_resume
from tests.helpers import ROOT

DEVICE = os.environ.get("MLHW_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="no CUDA device here")
WEIGHTS_RTOL = 1e-3  # ||resumed - straight|| / ||straight|| over all weights, on CUDA


def test_hw5_killed_and_resumed_on_cuda_ends_within_tolerance(tmp_path):
    demo = mt.write_demo_data(tmp_path / "data", pairs=600, test=20, mono=0)
    overrides = [f'data.dir="{demo}"', f'data.cache_dir="{tmp_path / "cache"}"',
                 "data.vocab_size=200", "data.max_tokens=512", "model.d_model=32",
                 "model.heads=2", "model.enc_layers=1", "model.dec_layers=1", "model.ff_dim=64",
                 "model.beam=2", "trainer.epochs=2", "trainer.ckpt_every_steps=5",
                 "trainer.accum_steps=2", f'trainer.device="{DEVICE}"', "trainer.amp=true",
                 "trainer.print_every_evals=1000"]
    a, b = kill_and_resume("hw.hw5_translate.task:TranslationTask",
                           str(ROOT / "configs" / "hw5_cpu.toml"), overrides, tmp_path, 8, 5)
    assert a["trainer"]["step"] == b["trainer"]["step"] > 8
    diff = sum(float((a["model"][k].float() - b["model"][k].float()).norm() ** 2)
               for k in a["model"]) ** 0.5
    norm = sum(float(v.float().norm() ** 2) for v in a["model"].values()) ** 0.5
    assert diff <= WEIGHTS_RTOL * norm
    if DEVICE == "cpu":
        assert diff == 0.0


def predict_on(run_dir, *, cpu: bool) -> np.ndarray:
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "hw8", "predict",
                           "--run", str(run_dir)], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(run_dir / "submission.csv")["score"].to_numpy()


def test_hw8_predict_on_cuda_gives_the_cpu_submission(tmp_path):
    data = faces.write_demo_data(tmp_path / "data", n_train=300, n_normal=30, n_anomalies=30)
    device = "auto" if DEVICE == "cuda" else "cpu"  # auto: the CPU once CUDA is hidden
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py"), "hw8", "train", "--data", str(data),
         "--config", str(ROOT / "configs" / "hw8_cpu.toml"), "--out", str(tmp_path / "run"),
         "--set", "trainer.epochs=2", "--set", f'trainer.device="{device}"'],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    on_gpu, on_cpu = predict_on(tmp_path / "run", cpu=False), predict_on(tmp_path / "run",
                                                                          cpu=True)
    assert len(on_gpu) == len(on_cpu) == 60 and np.isfinite(on_gpu).all()
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-5)
