import numpy as np
import pytest
import torch

from common.core.errors import UserError
from common.engine.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from common.engine.rundir import RunDir
from common.experiments.submission import validate_submission, write_submission


def test_checkpoint_round_trip_and_no_temp_files(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "trainer": {"step": 4}})
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.ones(3)) and state["trainer"]["step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_truncated_foreign_and_missing_checkpoints_name_the_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"last.pt: truncated or not a checkpoint"):
        load_checkpoint(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="foreign.pt: not a checkpoint written by this suite"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(path, {"model": {}})
    with pytest.raises(UserError, match="lacks optimizer"):
        load_checkpoint(path, required=("model", "optimizer"))


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(2)}})

    def disk_full(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    monkeypatch.undo()  # not picklable
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_submission_written_and_validated(tmp_path):
    path = tmp_path / "pred.csv"
    write_submission(path, ("id", "tested_positive"), [0, 1, 2], [1.5, 2.0, 3.25],
                     expected_ids=[0, 1, 2])
    assert path.read_text().splitlines() == ["id,tested_positive", "0,1.5", "1,2.0", "2,3.25"]
    frame = validate_submission(path, ("id", "tested_positive"), [0, 1, 2])
    assert len(frame) == 3
    with pytest.raises(UserError, match="header"):
        validate_submission(path, ("Id", "Class"), [0, 1, 2])


@pytest.mark.parametrize("ids, values, expected, message", [
    ([0, 1], [1.0, 2.0], [0, 1, 2], "2 rows, expected 3"),
    ([0, 2, 1], [1.0, 2.0, 3.0], [0, 1, 2], "row 2 has id 2, expected 1"),
    ([0, 1, 2], [1.0, np.nan, 3.0], [0, 1, 2], "NaN or inf"),
    ([0, 1, 2], [1.0, np.inf, 3.0], None, "NaN or inf"),
    ([0, 0, 2], [1.0, 2.0, 3.0], None, "not unique"),
    ([0, 1], [1.0], None, "2 ids but 1 predictions"),
])
def test_invalid_submission_never_replaces_the_old_file(tmp_path, ids, values, expected, message):
    path = tmp_path / "pred.csv"
    path.write_text("id,tested_positive\n0,9\n")
    with pytest.raises(UserError, match=message):
        write_submission(path, ("id", "tested_positive"), ids, values, expected_ids=expected)
    assert path.read_text() == "id,tested_positive\n0,9\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


def test_kept_checkpoints_are_the_newest_and_the_best(tmp_path):
    run = RunDir(tmp_path)
    manager = CheckpointManager(run, writes=True, keep_last=2, keep_best=2, mode="min")
    for step, value in zip(range(1, 7), [5.0, 1.0, 4.0, 2.0, 3.0, float("nan")], strict=True):
        manager.keep(step, value, {"model": {"w": torch.tensor([float(step)])}})
    names = sorted(p.name for p in run.step_checkpoints())
    assert names == [f"step-{s:09d}.pt" for s in (2, 4, 5, 6)]  # best 2 and 4, newest 5 and 6
    assert load_checkpoint(run.step_checkpoint(4))["model"]["w"].item() == 4.0
    # back to a last.pt of update 4: later files go, the kept list is the saved one
    saved = CheckpointManager(run, writes=True, keep_last=2, keep_best=2)
    saved.kept = [(2, 1.0), (3, 4.0), (4, 2.0)]
    manager.load_state_dict(saved.state_dict(), step=4)
    assert sorted(p.name for p in run.step_checkpoints()) == [f"step-{s:09d}.pt" for s in (2, 4)]
    assert manager.kept == [(2, 1.0), (4, 2.0)]  # step 3's file was deleted before the kill
    maxed = CheckpointManager(RunDir(tmp_path / "max"), writes=True, keep_best=1, mode="max")
    for step, value in ((1, 0.5), (2, 0.9), (3, 0.7)):
        maxed.keep(step, value, {"model": {}})
    assert [s for s, _ in maxed.kept] == [2]
