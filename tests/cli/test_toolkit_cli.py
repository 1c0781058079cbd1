"""The toolkit through the command line on HW1 demo data: ensemble and average."""

import torch

from tests.helpers import run_cli


def outputs(path):
    return torch.load(path / "test_outputs.pt", weights_only=True)["outputs"]


def test_average_and_ensemble_commands(tmp_path, hw1_demo):
    run = tmp_path / "run"
    trained = run_cli("hw1", "train", "--data", str(hw1_demo), "--out", str(run),
                      "--set", "trainer.epochs=4", "--set", "model.hidden=[32]",
                      "--set", "trainer.keep_checkpoints=2", "--set", "data.valid_ratio=0")
    assert trained.returncode == 0, trained.stderr
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert len(kept) == 2  # the older ones were deleted

    # the last kept checkpoint alone is the final model, which is also the run's best
    one = run_cli("hw1", "average", str(run), "--last", "1")
    assert one.returncode == 0, one.stderr
    assert torch.equal(outputs(run / "average-last1"), outputs(run))
    two = run_cli("hw1", "average", str(run), "--last", "2")
    assert two.returncode == 0, two.stderr
    assert (run / "checkpoints" / "average-last2.pt").is_file()
    assert not torch.allclose(outputs(run / "average-last2"), outputs(run))
    too_many = run_cli("hw1", "average", str(run), "--last", "3")
    assert too_many.returncode == 2 and "keep_checkpoints=3" in too_many.stderr

    same = run_cli("hw1", "ensemble", str(run), str(run), "--out", str(tmp_path / "same"))
    assert same.returncode == 0, same.stderr
    assert torch.allclose(outputs(tmp_path / "same"), outputs(run))
    assert (tmp_path / "same" / "pred.csv").read_text() == (run / "pred.csv").read_text()

    mixed = tmp_path / "mixed"
    fused = run_cli("hw1", "ensemble", str(run), str(run / "average-last2"), "--weights", "3",
                    "1", "--out", str(mixed))
    assert fused.returncode == 0, fused.stderr
    expected = 0.75 * outputs(run) + 0.25 * outputs(run / "average-last2")
    assert torch.allclose(outputs(mixed), expected, atol=1e-6)

    never = ["--out", str(tmp_path / "never")]
    vote = run_cli("hw1", "ensemble", str(run), str(mixed), "--method", "vote", *never)
    assert vote.returncode == 2 and "regression" in vote.stderr
    missing = run_cli("hw1", "ensemble", str(run), str(tmp_path / "nope"), *never)
    assert missing.returncode == 2 and "no saved test outputs" in missing.stderr
    weights = run_cli("hw1", "ensemble", str(run), str(mixed), "--weights", "1", *never)
    assert weights.returncode == 2 and "one per member" in weights.stderr
    assert not (tmp_path / "never").exists()  # nothing is made before the inputs are checked
