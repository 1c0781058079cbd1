"""HW6: the Fréchet distance and its feature networks, JudgeBoi's archive, a DCGAN that learns
the demo faces without collapsing, WGAN-GP's penalty at work, the report figure, the style
generator end to end, exact resume of a killed GAN run, the real faces in ../shared, and the
errors a user can cause."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from common.core.config import load_config
from common.core.errors import UserError
from common.engine.checkpoint import load_checkpoint
from common.engine.plots import read_steps
from hw.cli import main as cli_main
from hw.hw6_gan import data as faces
from hw.hw6_gan import fid
from hw.hw6_gan.task import GanTask, write_archive
from tests.helpers import (
    ROOT,
    SHARED,
    check_cache_write_fails_cleanly,
    cli_child,
    train_in_process,
)

CPU = str(ROOT / "configs" / "hw6_cpu.toml")
REAL_FACES = SHARED / "hw6" / "anime_faces"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return faces.write_demo_data(tmp_path_factory.mktemp("hw6demo"), count=640)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def demo_faces(demo, size=32, n=320) -> torch.Tensor:
    from common.data.images import load_images

    return as_tensor(load_images(faces.face_files(demo)[:n], size).array)


def train(demo, out, *sets, config=CPU, dry=False):
    return train_in_process("hw6", demo, out, config, *sets, dry=dry)


# --------------------------------------------------------------------------- FID
def test_frechet_distance_matches_closed_forms_and_scipy():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8)) * 2 + 1
    (m1, c1), (m2, c2) = fid.statistics(a), fid.statistics(b)
    reference = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert fid.frechet_distance(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-8)
    # fewer samples than features: singular covariances stay finite and non-negative
    few = fid.statistics(rng.normal(size=(5, 40)))
    assert 0 <= fid.frechet_distance(*few, *few) < 1e-6


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(demo):
    images = demo_faces(demo)
    net = fid.feature_network("")
    base = fid.statistics(fid.image_features(net, images))
    assert abs(fid.frechet_distance(*base, *base)) < 1e-6
    gen = torch.Generator().manual_seed(0)
    scores = []
    for sigma in (8, 24, 64):
        noisy = (images.float() + torch.randn(images.shape, generator=gen) * sigma)
        noisy = noisy.clamp(0, 255).to(torch.uint8)
        scores.append(fid.frechet_distance(*fid.statistics(fid.image_features(net, noisy)),
                                           *base))
    assert 0 < scores[0] < scores[1] < scores[2], scores
    # the proxy network is fixed: built twice, the same weights
    assert all(torch.equal(a, b) for a, b in zip(fid.ProxyFeatures().state_dict().values(),
                                                 fid.ProxyFeatures().state_dict().values(),
                                                 strict=True))


def test_inception_features_from_a_local_weights_file(tmp_path, demo, capsys):
    from torchvision.models import inception_v3

    path = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    net = fid.feature_network(str(path))
    feats = fid.image_features(net, demo_faces(demo, n=3), batch=2)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    with pytest.raises(UserError, match="InceptionV3 weights not found"):
        fid.InceptionFeatures(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    code = cli_main(["hw6", "fid", "--real", str(demo), "--fake", str(demo),
                     "--inception", str(tmp_path / "bad.pth")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.pth: not a PyTorch state dict" in err[0], err


# --------------------------------------------------------------------------- archive
def test_archive_holds_1000_jpegs_at_its_root_under_2_mb(tmp_path):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1000, 3, 64, 64), dtype=torch.uint8, generator=gen)
    quality, size = write_archive(noise, tmp_path / "submission.tgz", tmp_path / "images")
    data = (tmp_path / "submission.tgz").read_bytes()
    assert size == len(data) < 2_000_000 and quality < 95    # noise forces lower quality
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert sorted(names) == sorted(f"{i}.jpg" for i in range(1, 1001))
        assert all("/" not in n for n in names)
        from PIL import Image

        with Image.open(tar.extractfile("1000.jpg")) as im:
            assert im.size == (64, 64) and im.format == "JPEG"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(names)
    flat = torch.full((1000, 3, 64, 64), 128, dtype=torch.uint8)
    assert write_archive(flat, tmp_path / "flat.tgz")[0] == 95
    with pytest.raises(UserError, match="do not fit"):
        write_archive(noise, tmp_path / "tiny.tgz", limit=10_000)
    assert not (tmp_path / "tiny.tgz").exists()


# --------------------------------------------------------------------------- training
@pytest.mark.slow
def test_dcgan_learns_the_demo_faces_without_collapse(demo, tmp_path):
    run = tmp_path / "dcgan"
    sets = ["trainer.epochs=30", "trainer.ema=false", "optim.lr=4e-4", "model.fid_images=300",
            "trainer.eval_every_steps=100", "data.fid_real=640"]
    config = load_config(GanTask.schema(), CPU, [*sets, f'data.dir="{demo}"',
                                                 f'data.cache_dir="{tmp_path / "cache"}"'])
    task = GanTask(config)
    array = task.load_train(demo)
    from common.experiments.pipeline import make_trainer

    torch.manual_seed(config["trainer"].seed)
    _, valid = task.make_datasets(array, *task.split(array))
    untrained = make_trainer(task, task.build_model(), None).evaluate(valid)["proxy_fid"]
    assert train(demo, run, *sets) == 0
    history = read_steps(run / "metrics.csv")
    best = float(np.nanmin(history["valid_proxy_fid"]))
    assert best < 0.5 * untrained, (best, untrained)
    print(f"demo: proxy FID untrained {untrained:.1f}, best of 300 updates {best:.1f}")
    # diverse: generated faces lie as far apart as real ones (no collapse to a few modes)
    with tarfile.open(run / "submission.tgz") as tar:
        from PIL import Image

        fake = np.stack([np.asarray(Image.open(tar.extractfile(f"{i}.jpg")))
                         for i in range(1, 201)]).astype(np.float32)
    real = demo_faces(demo, n=200).permute(0, 2, 3, 1).numpy().astype(np.float32)

    def spread(x):
        flat = torch.from_numpy(x.reshape(len(x), -1))
        return float(torch.pdist(flat).mean())

    print(f"demo: mean pairwise distance generated {spread(fake):.0f}, real {spread(real):.0f}")
    assert spread(fake) > 0.5 * spread(real), (spread(fake), spread(real))
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "step-000000300.png"
    # generate again with another seed: other faces, same archive rules
    assert cli_main(["hw6", "generate", "--run", str(run), "--out", str(tmp_path / "gen"),
                     "--seed", "5"]) == 0
    assert (tmp_path / "gen" / "submission.tgz").read_bytes() != \
        (run / "submission.tgz").read_bytes()
    assert len(list((tmp_path / "gen" / "images").iterdir())) == 1000


@pytest.mark.slow
def test_gradient_penalty_drives_the_critic_norm_toward_one_and_the_report(demo, tmp_path,
                                                                           capsys):
    common = ["data.image_size=32", "model.g_width=32", "model.d_width=32",
              "model.fid_images=100", "trainer.eval_every_steps=0", "data.fid_real=300",
              "trainer.epochs=6"]
    gp = tmp_path / "gp"
    assert train(demo, gp, *common, config=str(ROOT / "configs" / "hw6_wgangp.toml")) == 0
    norms = read_steps(gp / "steps.csv")["gp_grad_norm"]
    first, last = np.abs(norms[:5] - 1).mean(), np.abs(norms[-15:] - 1).mean()
    assert last < 0.5 * first, (first, last)
    clip = tmp_path / "clip"
    assert train(demo, clip, *common, "trainer.epochs=1",
                 config=str(ROOT / "configs" / "hw6_wgan.toml")) == 0
    weights = load_checkpoint(clip / "checkpoints" / "last.pt")["model"]
    params = {f"D.{k}" for k, _ in GanTask(load_config(
        GanTask.schema(), clip / "config.toml")).build_model()["D"].named_parameters()}
    assert max(float(weights[k].abs().max()) for k in params) <= 0.01 + 1e-7
    capsys.readouterr()
    out = tmp_path / "report.png"
    assert cli_main(["hw6", "report", "--run", str(clip), "--run", str(gp),
                     "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "(4 layers, 4 layers)" in capsys.readouterr().out


@pytest.mark.slow
def test_style_generator_end_to_end_with_r1_augmentation_and_truncation(demo, tmp_path):
    run = tmp_path / "style"
    assert train(demo, run, 'model.arch="style"', "data.image_size=16", "model.g_width=8",
                 "model.d_width=8", "model.max_channels=16", "model.w_dim=16",
                 "model.z_dim=16", "model.mapping_layers=2", "model.r1_gamma=1.0",
                 'model.augment="flip,color,translation,cutout"', "model.fid_images=64",
                 dry=True) == 0
    assert "r1" in read_steps(run / "steps.csv")
    for psi in ("1.0", "0.0"):
        assert cli_main(["hw6", "generate", "--run", str(run), "--out", str(tmp_path / psi),
                         "--truncation", psi, "--count", "20"]) == 0
    with tarfile.open(tmp_path / "0.0" / "submission.tgz") as tar:
        from PIL import Image

        same = [np.asarray(Image.open(tar.extractfile(f"{i}.jpg")), dtype=np.float32)
                for i in (1, 2)]
    # psi 0: every face from the mean w; only the noise inputs differ
    spread0 = np.abs(same[0] - same[1]).mean()
    with tarfile.open(tmp_path / "1.0" / "submission.tgz") as tar:
        other = [np.asarray(Image.open(tar.extractfile(f"{i}.jpg")), dtype=np.float32)
                 for i in (1, 2)]
    assert spread0 < np.abs(other[0] - other[1]).mean()


@pytest.mark.slow
def test_a_killed_gan_run_resumes_bit_exactly(demo, tmp_path):
    from tests.common.test_resume import kill_and_resume

    overrides = [f'data.dir="{demo}"', f'data.cache_dir="{tmp_path / "cache"}"',
                 "data.image_size=16", "model.g_width=8", "model.d_width=8",
                 "model.fid_images=50", "data.fid_real=100", "trainer.epochs=2",
                 "trainer.eval_every_steps=5", "trainer.ckpt_every_steps=7",
                 'model.augment="flip,translation"', "model.n_critic=2",
                 'trainer.device="cpu"', "trainer.print_every_evals=1000"]
    # killed mid-epoch 2 (10 updates an epoch), resumed from update 14
    a, b = kill_and_resume("hw.hw6_gan.task:GanTask", CPU, overrides, tmp_path, 16, 14)
    assert a["trainer"]["step"] == b["trainer"]["step"] == 20
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    for name in ("G", "D"):
        for i, value in a["optimizers"][name]["state"].items():
            assert torch.equal(value["exp_avg"], b["optimizers"][name]["state"][i]["exp_avg"])
    for name in ("metrics.csv", "steps.csv", "submission.tgz"):
        assert (tmp_path / "straight" / name).read_bytes() == \
            (tmp_path / "killed" / name).read_bytes(), name


# --------------------------------------------------------------------------- inputs
def test_bad_inputs_stop_with_one_line(demo, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken" / "faces"
    broken.mkdir(parents=True)
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes((demo / "faces" / f"{i}.jpg").read_bytes())
    (broken / "3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not an archive at all")
    cut = tmp_path / "cut.tgz"   # a download that stopped half way
    write_archive(demo_faces(demo, size=32, n=100), tmp_path / "whole.tgz")
    cut.write_bytes((tmp_path / "whole.tgz").read_bytes()[:5000])
    cases = [
        (["train", "--data", str(empty), "--config", CPU, "--out", str(tmp_path / "r1")],
         "no faces/ folder of images"),
        (["train", "--data", str(broken.parent), "--config", CPU, "--out", str(tmp_path / "r2"),
          "--set", f'data.cache_dir="{tmp_path / "c"}"'], "3.jpg: unreadable image"),
        (["train", "--data", str(demo), "--config", CPU, "--out", str(tmp_path / "r3"),
          "--set", "data.image_size=48"], "must be a power of two"),
        (["train", "--data", str(demo), "--config", CPU, "--out", str(tmp_path / "r4"),
          "--set", 'model.augment="zoom"'], "unknown zoom"),
        (["kfold", "--data", str(demo), "--config", CPU, "--out", str(tmp_path / "r5")],
         "k-fold cannot fuse"),
        # D and G step on every batch: accumulation is refused before anything is written
        (["train", "--data", str(demo), "--config", CPU, "--out", str(tmp_path / "r6"),
          "--set", "trainer.accum_steps=2"], "trainer.accum_steps=2: hw6 steps on every batch"),
        (["train", "--data", str(demo), "--config", CPU, "--out", str(tmp_path / "r7"),
          "--set", 'model.arch="biggan"'], "use one of dcgan, style"),
        (["generate", "--run", str(tmp_path / "nothing")], "config.toml: not found"),
        (["fid", "--real", str(demo), "--fake", str(tmp_path / "none.tgz")],
         "neither a folder of images nor a .tgz"),
        (["fid", "--real", str(demo), "--fake", str(junk)], "junk.tgz: unreadable archive"),
        (["fid", "--real", str(demo), "--fake", str(cut)], "cut.tgz: unreadable archive "
         "(Compressed file ended before the end-of-stream marker was reached)"),
    ]
    for argv, expected in cases:
        code = cli_main(["hw6", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (argv, err)
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 8))


def test_real_faces_are_found_one_level_down_and_score_closer_than_the_demo(demo):
    if not (REAL_FACES / "faces" / "0.jpg").is_file():
        pytest.skip("real anime faces (../shared/data/hw6) not present")
    from common.data.images import load_images

    files = faces.face_files(REAL_FACES.parent)           # anime_faces/faces, one level down
    assert files[:3] == [REAL_FACES / "faces" / f"{i}.jpg" for i in range(3)]
    real = as_tensor(load_images(files[:600], 32).array)
    net = fid.feature_network("")
    a, b = (fid.statistics(fid.image_features(net, x)) for x in (real[:300], real[300:]))
    other = fid.statistics(fid.image_features(net, demo_faces(demo, n=300)))
    assert fid.frechet_distance(*a, *b) < 0.5 * fid.frechet_distance(*a, *other)


def test_fid_command_scores_a_folder_or_an_archive(demo, tmp_path, capsys):
    images = demo_faces(demo, size=32, n=200)
    write_archive(images, tmp_path / "faces.tgz")
    capsys.readouterr()
    for fake in (demo / "faces", tmp_path / "faces.tgz"):
        assert cli_main(["hw6", "fid", "--real", str(demo), "--fake", str(fake),
                         "--size", "32"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert all(line.startswith("proxy FID (fixed random network, not Inception): ")
               for line in said), said
    self_fid, archive_fid = (float(line.split(": ")[1].split()[0]) for line in said)
    assert self_fid == 0.0 and 0.0 < archive_fid  # JPEG re-encoding moves the archive a bit
    assert "200 fake against 640 real at 32 x 32" in said[1]


@pytest.mark.slow
def test_a_short_run_on_real_faces_moves_toward_faces_it_never_saw(tmp_path, capsys):
    """hw6_cpu on 640 real anime faces: after 80 updates (no EMA) its 1000 generated faces
    are much closer (proxy FID) to 600 real faces it never saw than a 2-update generator's."""
    if not (REAL_FACES / "faces" / "0.jpg").is_file():
        pytest.skip("real anime faces (../shared/data/hw6) not present")
    train_dir, unseen = tmp_path / "real" / "faces", tmp_path / "unseen"
    for folder, numbers in ((train_dir, range(640)), (unseen, range(2400, 3000))):
        folder.mkdir(parents=True)
        for i in numbers:
            (folder / f"{i}.jpg").symlink_to(REAL_FACES / "faces" / f"{i}.jpg")
    sets = ["data.fid_real=640", "model.fid_images=200", "trainer.eval_every_steps=40"]
    assert train(train_dir.parent, tmp_path / "untrained", *sets, dry=True) == 0
    assert train(train_dir.parent, tmp_path / "trained", *sets, "trainer.epochs=8",
                 "trainer.ema=false") == 0
    capsys.readouterr()
    scores = []
    for run in ("untrained", "trained"):
        assert cli_main(["hw6", "fid", "--real", str(unseen), "--fake",
                         str(tmp_path / run / "submission.tgz"), "--size", "32"]) == 0
        scores.append(float(capsys.readouterr().out.split(": ")[1].split()[0]))
    assert scores[1] < 0.7 * scores[0], scores


def test_a_full_disk_while_writing_the_cache_is_one_line_and_leaves_nothing(demo, tmp_path):
    """the face cache under a real file-size limit (a child process under RLIMIT_FSIZE)."""
    check_cache_write_fails_cleanly("hw6", demo, str(ROOT / "configs" / "hw6_cpu.toml"),
                                    tmp_path)


def test_generate_replaces_a_submission_only_when_told_and_whole(demo, tmp_path, capsys):
    """generate over a finished run's submission.tgz refuses without --force; with --force
    on a nearly full disk (the archive over a real file-size limit) it fails in one line and
    leaves the old archive and images byte for byte."""
    run = tmp_path / "run"
    assert train(demo, run, dry=True) == 0
    before = {p.relative_to(run): p.read_bytes() for p in
              [run / "submission.tgz", *sorted((run / "images").iterdir())]}
    capsys.readouterr()
    assert cli_main(["hw6", "generate", "--run", str(run), "--seed", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "submission.tgz: exists (a finished submission); pass --force" \
        in err[0]
    archive = (run / "submission.tgz").stat().st_size
    done = cli_child("hw6", "generate", "--run", str(run), "--seed", "7", "--force",
                     cwd=tmp_path, limit=archive // 2)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert err[-1].startswith("error: ") and "submission.tgz: cannot write (File too large)" \
        in err[-1], err
    after = {p.relative_to(run): p.read_bytes() for p in
             [run / "submission.tgz", *sorted((run / "images").iterdir())]}
    assert after == before
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".owner"]  # no staging left
