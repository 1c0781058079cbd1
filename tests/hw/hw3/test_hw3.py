"""HW3: the Food-11 layout, the image cache, augmentation, models, submissions, the recipes."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from common.core.config import load_config
from common.core.errors import UserError
from common.data import images as img_cache
from common.data.loading import build_loader
from common.experiments.finished import predict_run
from common.experiments.kfold import kfold_run
from common.experiments.pipeline import train_run
from hw.hw3_food import data as food
from hw.hw3_food.task import FoodTask
from tests.helpers import ROOT, SHARED, check_cache_write_fails_cleanly, run_cli

FOOD_SAMPLE = SHARED / "hw3" / "food_sample"
# the tests' reduced recipe: 32x32 crops of a 36x36 cache, a narrow residual net
SMALL = ["data.image_size=32", "data.cache_size=36", "model.widths=[16,32,64,128]",
         "model.stem=conv3", "trainer.batch_size=32", "trainer.epochs=15"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return food.write_demo_data(tmp_path_factory.mktemp("hw3demo"))


def config(demo, cache, name="hw3_cpu", overrides=()):
    return load_config(FoodTask.schema(), ROOT / "configs" / f"{name}.toml",
                       [f"data.dir={demo}", f"data.cache_dir={cache}", *overrides])


def test_accuracy(submission, demo) -> float:
    key = pd.read_csv(demo / food.DEMO_TEST_LABELS, dtype={"Id": str})
    got = pd.read_csv(submission, dtype={"Id": str})
    assert list(got["Id"]) == list(key["Id"])
    return float((got["Category"] == key["Category"]).mean())


test_accuracy.__test__ = False  # a helper, not a test


def demo_labels(demo) -> torch.Tensor:
    key = pd.read_csv(demo / food.DEMO_TEST_LABELS, dtype={"Id": str})
    return torch.tensor(key["Category"].to_numpy())


def nll(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(outputs.double(), labels))


# --- layout ---------------------------------------------------------------------------------
def test_demo_layout_labels_and_nesting(demo, tmp_path):
    root = demo / "food11"
    assert food.find_root(demo) == root and food.find_root(root) == root
    train = img_cache.image_files(root / "training")
    assert len(train) == 11 * 40 and {food.label_of(f) for f in train} == set(range(11))
    assert food.label_of(root / "training" / "10_3.jpg") == 10
    for cls in range(11):  # indices contiguous per class
        idx = sorted(int(f.stem.split("_")[1]) for f in train if food.label_of(f) == cls)
        assert idx == list(range(40))
    sizes = {Image.open(f).size for f in train[:40]}
    assert len(sizes) > 20  # varying sizes, all decoded to one
    test = food.test_id_order(img_cache.image_files(root / "test"))
    assert [f.stem for f in test] == [f"{i:04d}" for i in range(1, 111)]
    # Kaggle's nesting: <dataset>/food11/... and food11/food11/...
    nested = tmp_path / "ml2022spring-hw3b" / "food11"
    nested.mkdir(parents=True)
    (nested / "food11").symlink_to(root, target_is_directory=True)
    assert food.find_root(tmp_path / "ml2022spring-hw3b") == nested / "food11"
    with pytest.raises(UserError, match="no training/"):
        food.find_root(tmp_path)
    with pytest.raises(UserError, match="<label>_<index>"):
        food.label_of(root / "training" / "x_1.jpg")
    with pytest.raises(UserError, match="0001.jpg"):
        food.test_id_order([root / "test" / "a.jpg"])


def test_real_food_photos_decode_with_labels_from_names(tmp_path):
    if not FOOD_SAMPLE.is_dir():
        pytest.skip("real HW3 photos (../shared/data/hw3/food_sample) not present")
    files = img_cache.image_files(FOOD_SAMPLE)
    assert len(files) == 10
    assert [food.label_of(f) for f in files] == [0, 1, 1, 2, 2, 3, 5, 6, 8, 9]
    assert len({Image.open(f).size for f in files}) >= 4
    for mode in ("squash", "crop"):
        cached = img_cache.load_images(files, 64, resize=mode)
        assert cached.array.shape == (10, 64, 64, 3) and not cached.bad
        # close to a plain full-resolution decode and resize
        full = Image.open(files[2]).convert("RGB")
        ref = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR) if mode == "squash"
                         else ImageOps.fit(full, (64, 64)))
        assert np.abs(cached.array[2].astype(int) - ref.astype(int)).mean() < 8
    # the real layout end to end: training/ from the photos, through the task's loader
    (tmp_path / "food11" / "training").mkdir(parents=True)
    (tmp_path / "food11" / "test").mkdir()
    for f in files:
        shutil.copy(f, tmp_path / "food11" / "training" / f.name)
    shutil.copy(files[0], tmp_path / "food11" / "test" / "0001.jpg")
    task = FoodTask(config(tmp_path, tmp_path / "cache"))
    images = task.load_train(tmp_path)
    assert images.labels.tolist() == [0, 1, 1, 2, 2, 3, 5, 6, 8, 9]
    assert task.split(images)[1].size == 0  # no validation/ folder: nothing to validate on


# --- the cache --------------------------------------------------------------------------------
def test_cache_is_reused_and_rebuilt_when_inputs_change(demo, tmp_path, monkeypatch):
    files = img_cache.image_files(demo / "food11" / "validation")[:12]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    files = img_cache.image_files(tmp_path)
    first = img_cache.load_images(files, 24, cache_dir=tmp_path / "c")
    memory = img_cache.load_images(files, 24)
    assert np.array_equal(first.array, memory.array) and first.path.is_file()
    rows = np.array([9, 1, 4, 6, 2])  # statistics read in chunks == numpy over the rows
    mean, std = img_cache.channel_stats(first.array, rows, chunk=2)
    pixels = first.array[rows].reshape(-1, 3).astype(np.float64)
    assert np.allclose(mean, pixels.mean(0)) and np.allclose(std, pixels.std(0))
    calls = []
    real = img_cache.decode_image
    monkeypatch.setattr(img_cache, "decode_image",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    again = img_cache.load_images(files, 24, cache_dir=tmp_path / "c")
    assert calls == [] and isinstance(again.array, np.memmap)
    assert np.array_equal(again.array, first.array)
    img_cache.load_images(files, 28, cache_dir=tmp_path / "c")          # new size: rebuilt
    assert len(calls) == 12
    img_cache.load_images(files, 24, resize="crop", cache_dir=tmp_path / "c")  # new mode
    assert len(calls) == 24
    time.sleep(0.01)
    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(files[3])  # a file changes
    changed = img_cache.load_images(files, 24, cache_dir=tmp_path / "c")
    assert len(calls) == 36 and changed.array[3].max() == 0
    assert len(list((tmp_path / "c").glob("*.npy"))) == 4
    # each part of the key alone: the modification time (same bytes), then the size (the
    # old modification time put back)
    stat = files[5].stat()
    os.utime(files[5], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    img_cache.load_images(files, 24, cache_dir=tmp_path / "c")
    assert len(calls) == 48
    stat = files[6].stat()
    files[6].write_bytes(files[6].read_bytes() + b"\0" * 16)   # JPEG readers ignore the tail
    os.utime(files[6], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    img_cache.load_images(files, 24, cache_dir=tmp_path / "c")
    assert len(calls) == 60


def test_unreadable_image_is_an_error_or_skipped_with_a_warning(demo, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(demo / "food11", data / "food11")
    (data / "food11" / "training" / "3_7.jpg").write_bytes(b"not a jpeg")
    (data / "food11" / "test" / "0005.jpg").write_bytes(b"\xff\xd8 truncated")
    task = FoodTask(config(data, ""))
    with pytest.raises(UserError, match=r"3_7\.jpg: unreadable image .*skip_bad_images"):
        task.load_train(data)
    # through the CLI: one line, exit 2, no run directory
    out = tmp_path / "run"
    res = run_cli("hw3", "train", "--data", str(data), "--config", "configs/hw3_cpu.toml",
                  "--set", "data.cache_dir=", "--set", "data.image_size=32", "--out", str(out))
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {data}/food11/training/3_7")
    task = FoodTask(config(data, tmp_path / "c", overrides=["data.skip_bad_images=true"]))
    images = task.load_train(data)
    training_ids = [i for i, k in zip(images.ids, images.folder, strict=True) if k == 0]
    assert len(images) == 11 * 55 - 1 and "3_7" not in training_ids and "3_6" in training_ids
    test = task.load_test(data)  # a test image is kept (black) so every id gets a prediction
    assert len(test) == 110 and test.array[test.rows[4]].max() == 0
    assert "0005.jpg: unreadable image" in capsys.readouterr().err


# --- augmentation -----------------------------------------------------------------------------
def test_augmentation_is_a_function_of_seed_epoch_and_item(demo, tmp_path):
    task = FoodTask(config(demo, tmp_path, overrides=["data.policy=rand"]))
    images = task.load_train(demo)
    train, valid = task.make_datasets(images, *task.split(images))
    x0 = train[torch.arange(8)][0]
    assert torch.equal(x0[5], train[5][0])
    assert x0.dtype == torch.uint8 and x0.shape == (8, 3, 64, 64)
    torch.manual_seed(123)  # the global RNG has no say
    assert torch.equal(torch.stack([train[i][0] for i in range(8)]), x0)
    loader = build_loader(train, 4, num_workers=2)  # nor do workers
    assert torch.equal(torch.cat([b[0] for b, _ in zip(loader, range(2), strict=False)]), x0)
    train.set_epoch(1)
    assert not torch.equal(torch.stack([train[i][0] for i in range(8)]), x0)
    # the evaluation view is the centre crop of the cache, gathered per batch
    xv, yv = valid[torch.arange(3)]
    rows = valid.rows[:3]
    assert torch.equal(xv, torch.from_numpy(images.array[rows, 4:68, 4:68]).permute(0, 3, 1, 2))
    assert torch.equal(yv, images.labels[torch.from_numpy(np.flatnonzero(images.folder == 1)[:3])])
    view0, view1 = task.tta_view(valid, 0, seed=11), task.tta_view(valid, 1, seed=12)
    a = torch.stack([view0[i][0] for i in range(3)])
    assert a.shape == xv.shape and not torch.equal(a, xv)
    assert not torch.equal(a, torch.stack([view1[i][0] for i in range(3)]))
    for policy in ("trivial", "auto", "none"):
        t = FoodTask(config(demo, tmp_path, overrides=[f"data.policy={policy}",
                                                       "data.rotation=10", "data.erasing=0.5",
                                                       "data.color_jitter=0.2"]))
        assert t.train_transform()(images.array[0]).shape == (3, 64, 64)
    with pytest.raises(UserError, match="data.policy"):
        FoodTask(config(demo, tmp_path, overrides=["data.policy=magic"])).train_transform()


# --- models -----------------------------------------------------------------------------------
def test_models_build_without_pretrained_weights(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a pretrained weight file was requested")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_download,
                        raising=False)
    cases = [(["model.arch=course_cnn", "data.image_size=128"], 128, 12_833_803),
             (["model.arch=resnet"], 64, None),
             (["model.arch=resnet", "model.bottleneck=true", "model.blocks=[1,1,1,1]"], 64, None),
             (["model.arch=resnet18", "model.stem=imagenet"], 64, 11_182_155),
             (["model.arch=resnet18", "model.stem=conv3s2"], 64, None),
             (["model.arch=mobilenet_v3_small"], 64, None)]
    for overrides, size, n_params in cases:
        cfg = load_config(FoodTask.schema(), ROOT / "configs" / "hw3_cpu.toml",
                          [*overrides, f"data.image_size={size}", f"data.cache_size={size}"])
        model = FoodTask(cfg).build_model().eval()
        out = model(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8))
        assert out.shape == (2, 11), overrides
        if n_params:
            assert sum(p.numel() for p in model.parameters()) == n_params, overrides
    with pytest.raises(UserError, match="unknown"):
        FoodTask(load_config(FoodTask.schema(), None, ["model.arch=vgg99"])).build_model()


# --- end to end -------------------------------------------------------------------------------
def test_dry_run_writes_a_kaggle_submission_with_cutmix(demo, tmp_path):
    out = tmp_path / "run"
    res = run_cli("hw3", "train", "--data", str(demo), "--config", "configs/hw3_cpu.toml",
                  "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "mix.cutmix_alpha=1.0",
                  "--set", "mix.mixup_alpha=0.2", "--set", "predict.tta=2", "--dry-run",
                  "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = (out / "submission.csv").read_text().splitlines()
    assert lines[0] == "Id,Category" and len(lines) == 111
    assert lines[1].split(",")[0] == "0001" and lines[-1].split(",")[0] == "0110"
    assert all(0 <= int(line.split(",")[1]) < 11 for line in lines[1:])
    outputs = torch.load(out / "test_outputs.pt", weights_only=True)["outputs"]
    assert outputs.shape == (110, 11) and outputs.std(0).min() > 0  # depends on the image


@pytest.mark.slow
def test_recipes_on_demo_data(demo, tmp_path):
    """The residual recipe with augmentation beats the course sample; test-time augmentation
    does not lower accuracy; the fused k-fold models have a lower log-loss than their members on
    average. Scored on the demo's held-out test images (k-fold trains on validation/ too)."""
    cache = tmp_path / "cache"
    sample = train_run(FoodTask, config(demo, cache, "hw3_sample", SMALL[:2]), tmp_path / "s")
    plain = train_run(FoodTask, config(demo, cache, overrides=[*SMALL, "predict.tta=0"]),
                      tmp_path / "r")
    tta = predict_run(FoodTask, tmp_path / "r", tta=4, out_dir=tmp_path / "r-tta")
    folds = kfold_run(FoodTask, config(demo, cache, overrides=[*SMALL, "predict.tta=0",
                                                                "kfold.folds=2"]),
                      tmp_path / "k")
    acc = {name: test_accuracy(path, demo) for name, path in
           [("sample", sample["submission"]), ("residual", plain["submission"]),
            ("residual+tta", tta), ("kfold", folds["submission"])]}
    members = [test_accuracy(tmp_path / "k" / f"fold-{k}" / "submission.csv", demo)
               for k in (1, 2)]
    print(acc, "fold members", members)
    assert acc["residual"] > acc["sample"] + 0.2
    assert acc["residual+tta"] >= acc["residual"]
    # fusing probabilities can only lower the log-loss against the members' mean (Jensen);
    # accuracy on 110 images is too coarse to rank the ensemble
    labels = demo_labels(demo)
    fused = torch.load(tmp_path / "k" / "test_outputs.pt", weights_only=True)["outputs"]
    member_nll = [nll(torch.load(tmp_path / "k" / f"fold-{k}" / "test_outputs.pt",
                                 weights_only=True)["outputs"], labels) for k in (1, 2)]
    assert nll(fused, labels) < np.mean(member_nll)


@pytest.mark.slow
def test_killed_augmented_run_with_workers_resumes_exactly(demo, tmp_path):
    """Per-item augmentation seeds make a mid-epoch resume exact with loader workers too."""
    from common.engine.checkpoint import load_checkpoint
    from tests.common.test_resume import run_and_kill

    config = str(ROOT / "configs" / "hw3_cpu.toml")
    overrides = [f'data.dir="{demo}"', f'data.cache_dir="{tmp_path / "c"}"', *SMALL[:4],
                 "data.policy=trivial", "mix.cutmix_alpha=1.0", "mix.mixup_alpha=0.2",
                 "trainer.epochs=2", "trainer.num_workers=2", "trainer.ckpt_every_steps=4",
                 "predict.tta=0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_cli("hw3", "train", "--config", config, "--out", str(straight),
                   *[a for o in overrides for a in ("--set", o)])
    assert done.returncode == 0, done.stderr
    crash = run_and_kill("hw.hw3_food.task:FoodTask", config, overrides, killed, 10)
    assert crash.returncode == 17, crash.stderr
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["trainer"]["step"] == 8
    resumed = run_cli("hw3", "train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "submission.csv").read_text() == (killed / "submission.csv").read_text()


# --- real photos (a proxy: 10 Food-101 classes in the Food-11 layout) ------------------------
FOOD101 = SHARED / "hw3" / "food101" / "food11"


def real_subset(dest: Path, per_class: dict[str, int]) -> Path:
    """Links to the first N real photos of each class per folder (all test photos up to N)."""
    for folder, count in per_class.items():
        (dest / folder).mkdir(parents=True)
        files = img_cache.image_files(FOOD101 / folder)
        if folder == "test":
            chosen = files[:count]
        else:
            chosen = [f for f in files if int(f.stem.split("_")[1]) < count]
        for f in chosen:
            (dest / folder / f.name).symlink_to(f)
    return dest


@pytest.mark.slow
def test_a_short_run_on_real_food_photos_beats_chance(tmp_path):
    if not (FOOD101 / "training").is_dir():
        pytest.skip("real HW3 proxy photos (../shared/data/hw3/food101) not present")
    train = img_cache.image_files(FOOD101 / "training")
    assert len(train) == 3000 and len(img_cache.image_files(FOOD101 / "validation")) == 750
    assert {food.label_of(f) for f in train} == set(range(10))   # class 10 has no photos
    data = real_subset(tmp_path / "food11", {"training": 60, "validation": 20, "test": 30})
    result = train_run(FoodTask, config(data.parent, tmp_path / "cache", overrides=[
        *SMALL, "trainer.epochs=6", 'trainer.device="cpu"', "trainer.print_every_evals=1000",
        "predict.tta=0"]), tmp_path / "run")
    assert result["best"] > 0.2, result["best"]        # 10 classes seen: chance is 0.1
    ids = pd.read_csv(tmp_path / "run" / "submission.csv", dtype={"Id": str})["Id"]
    assert list(ids) == [f.stem for f in img_cache.image_files(FOOD101 / "test")[:30]]


def test_a_full_disk_while_writing_the_cache_is_one_line_and_leaves_nothing(demo, tmp_path):
    """the decoded image cache under a real file-size limit (a child process under RLIMIT_FSIZE)."""
    check_cache_write_fails_cleanly("hw3", demo, str(ROOT / "configs" / "hw3_cpu.toml"),
                                    tmp_path)
