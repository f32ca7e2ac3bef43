"""Transforms, PCA noise, test-time views, colour statistics, built-in data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.data import keyed_random
from alexnet.data.batches import Batches, TensorSource
from alexnet.data.digits import load_digits_split
from alexnet.data.stats import IMAGENET_EIGVAL, IMAGENET_EIGVEC, ColourStats
from alexnet.data.transforms import (
    AUGMENT_STREAMS,
    PCA_STREAMS,
    BatchAugment,
    Normalizer,
    crop_flip,
    epoch_draws,
    pca_noise,
    tta_10crop,
)
from alexnet.inference import predict_probs
from alexnet.models import create_model

from .conftest import FAST


def test_pca_noise_has_zero_mean_and_the_configured_covariance() -> None:
    n = 200_000
    eigval = torch.tensor(IMAGENET_EIGVAL)
    eigvec = torch.tensor(IMAGENET_EIGVEC)
    key = keyed_random.keys(0, 0, torch.arange(n))
    norm = Normalizer(torch.zeros(3), torch.ones(3), None, eigval, eigvec)
    shifted = norm.finish(torch.zeros(n, 3, 1, 1), pca_std=0.1, key=key)[:, :, 0, 0].double()  # (n, 3)
    assert shifted.mean(0).abs().max() < 2e-4
    expected = eigvec.double() @ torch.diag((0.1 * eigval.double()) ** 2) @ eigvec.double().T
    cov = torch.cov(shifted.T)
    torch.testing.assert_close(cov, expected, rtol=0.02, atol=1e-7)
    # one draw per image: every pixel of an image moves by the same rgb offset
    alpha = torch.randn(4, 3)
    out = pca_noise(torch.zeros(4, 3, 5, 5), alpha, eigval, eigvec)
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))


def test_a_samples_draws_do_not_depend_on_its_batch() -> None:
    """Keyed draws (drawn together for speed) are a sample's own: the same in any batch, so 1 and N processes
    augment alike."""
    key = keyed_random.keys(3, 2, torch.arange(50))
    together = keyed_random.normals(key, [10, 11, 12])
    assert torch.equal(keyed_random.normals(key[7:19], [10, 11, 12]), together[7:19])
    assert torch.equal(keyed_random.normal(key, 11), together[:, 1]) and together.std() > 0.5


def test_pca_noise_differs_per_presentation() -> None:
    eigval, eigvec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    norm = Normalizer(torch.zeros(3), torch.ones(3), None, eigval, eigvec)
    idx = torch.arange(4)
    a = norm.finish(torch.zeros(4, 3, 2, 2), 0.1, keyed_random.keys(0, 0, idx))
    b = norm.finish(torch.zeros(4, 3, 2, 2), 0.1, keyed_random.keys(0, 1, idx))
    assert not torch.allclose(a, b)


def test_crop_flip_takes_windows_of_the_image() -> None:
    x = torch.arange(2 * 3 * 10 * 10).view(2, 3, 10, 10)
    key = keyed_random.keys(0, 0, torch.arange(2))
    out = crop_flip(x, 6, flip=True, key=key)
    assert out.shape == (2, 3, 6, 6)
    for b in range(2):
        windows = [x[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def test_augmentation_is_independent_of_batch_composition() -> None:
    x = torch.randint(0, 255, (8, 3, 20, 20), dtype=torch.uint8)
    aug = BatchAugment("paper", 16, Normalizer(torch.zeros(3), torch.ones(3)), 0.0)
    idx = torch.arange(8)
    whole = aug(x, keyed_random.keys(3, 1, idx))
    halves = torch.cat([aug(x[:4], keyed_random.keys(3, 1, idx[:4])), aug(x[4:], keyed_random.keys(3, 1, idx[4:]))])
    assert torch.equal(whole, halves)


def test_ten_crop_equals_manual_average_of_the_ten_views() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet_owt", num_classes=7).eval()
    x = torch.randn(2, 3, 80, 80)
    probs = predict_probs(model, x, 70, "10crop", torch.device("cpu"))
    views = []
    for top, left in ((0, 0), (0, 10), (10, 0), (10, 10), (5, 5)):
        views.append(x[:, :, top : top + 70, left : left + 70])
    views += [v.flip(-1) for v in views]
    with torch.no_grad():
        manual = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
    torch.testing.assert_close(probs, manual, rtol=1e-5, atol=1e-6)
    assert len(tta_10crop(x, 70)) == 10


def test_builtin_digits_split_is_fixed_and_stratified() -> None:
    a = load_digits_split(72, 0.2, seed=0)
    b = load_digits_split(72, 0.2, seed=0)
    assert torch.equal(a["val_y"], b["val_y"]) and torch.equal(a["train_x"], b["train_x"])
    assert a["train_x"].shape[1:] == (3, 72, 72) and a["train_x"].dtype == torch.uint8
    assert len(a["train_y"]) + len(a["val_y"]) == 1797
    counts = a["val_y"].bincount()
    assert counts.min() >= 35 and counts.max() <= 37


@pytest.mark.parametrize("fraction, empty", [(0.0, "validation"), (1.0, "training")])
def test_a_digits_split_with_an_empty_side_is_one_line(fraction: float, empty: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """0 trained and reported "val top-1 0.00%" as if measured; 1 failed on "digits/train" statistics."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", f"data.val_fraction={fraction}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"data.val_fraction {fraction} leaves no {empty} images" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_pca_stats_command(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "stats.npz"
    assert main(["pca-stats", "--data", str(tiny_folder), "--out", str(out), "--size", "32", "--workers", "0"]) == 0
    s = ColourStats.load(out)
    assert s.count == 18 and s.mean_image.shape == (3, 32, 32)
    assert np.all(np.diff(s.eigval) <= 0) and s.eigval.min() >= 0
    np.testing.assert_allclose(s.eigvec.T @ s.eigvec, np.eye(3), atol=1e-6)
    # the red class pulls the red mean up: channel means differ from grey
    assert s.mean.shape == (3,) and np.all((s.mean > 0) & (s.mean < 1))
    assert "eigval" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["pca-stats", "--data", str(tiny_folder), "--out", str(out), "--size", "40", "--workers", "0"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["pca-stats", "--data", str(tiny_folder), "--out", str(out), "--size", "40", "--workers", "0",
                 "--force"]) == 0  # fmt: skip
    assert ColourStats.load(out).mean_image.shape == (3, 40, 40)
    capsys.readouterr()
    assert main(["pca-stats", "--data", str(tmp_path / "nope")]) == 2  # was "output directory does not exist"
    assert capsys.readouterr().err.strip() == f"alexnet pca-stats: error: data path not found: {tmp_path / 'nope'}"
    assert main(["pca-stats", "--data", str(tiny_folder), "--out", str(tmp_path / "p.txt")]) == 2  # an npz as .txt
    assert "--out must name a .npz file" in capsys.readouterr().err and not (tmp_path / "p.txt").exists()


def test_training_picks_up_the_dataset_stats(tiny_folder: Path, tmp_path: Path) -> None:
    from alexnet.config import load_recipe
    from alexnet.data.loaders import build_data
    from alexnet.engine.setup import resolve_config

    assert main(["pca-stats", "--data", str(tiny_folder), "--size", "72", "--workers", "0"]) == 0
    cfg = load_recipe("paper")
    cfg.data.path, cfg.data.resize, cfg.data.crop, cfg.data.workers = str(tiny_folder), 72, 67, 0
    data = build_data(resolve_config(cfg, torch.device("cpu")))
    assert data.normalizer.mean_image is not None and data.normalizer.mean_image.shape == (3, 72, 72)
    assert data.stats.count == 9 * 2


def test_stats_are_computed_when_missing_and_kept_with_the_run(tiny_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 0  # paper recipe: pixel mean
    s = ColourStats.load(run / "stats.npz")
    assert s.count == 18 and s.mean_image.shape == (3, 72, 72)


def test_batch_random_resized_crop_matches_torchvision_per_image() -> None:
    from torchvision.transforms.v2 import functional as TF

    from alexnet.data.transforms import resized_crop_batch, rrc_boxes

    x = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    key = keyed_random.keys(0, 2, torch.arange(6))
    out = resized_crop_batch(x, 32, 0.3, key)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    x0, y0, cw, ch = rrc_boxes(key, 64, 64, 0.3)
    for i in range(6):
        w, h = int(cw[i].round()), int(ch[i].round())
        left, top = min(int(x0[i].round()), 64 - w), min(int(y0[i].round()), 64 - h)
        assert 0.3 * 64 * 64 * 0.9 <= w * h <= 64 * 64 and 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1
        want = TF.resized_crop(x[i], top, left, h, w, [32, 32], antialias=True)
        assert torch.equal(out[i], want)  # the same pixels torchvision's RandomResizedCrop gives for that box


def test_fused_normalisation_equals_the_step_by_step_one() -> None:
    norm = Normalizer(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25]), None,
                      torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC))  # fmt: skip
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    key = keyed_random.keys(1, 0, torch.arange(5))
    fused = norm.fused(x, 0.1, key, torch.channels_last)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, norm.finish(norm.scale(x), 0.1, key), atol=1e-5, rtol=0)
    assert not torch.allclose(fused, norm(x))  # the colour noise is there


def test_modern_augmentation_is_independent_of_batch_composition() -> None:
    x = torch.randint(0, 255, (8, 3, 40, 40), dtype=torch.uint8)
    aug = BatchAugment("modern", 24, Normalizer(torch.zeros(3), torch.ones(3)), 0.1, 0.3)
    idx = torch.arange(8)
    whole = aug(x, keyed_random.keys(3, 1, idx))
    halves = torch.cat([aug(x[:4], keyed_random.keys(3, 1, idx[:4])), aug(x[4:], keyed_random.keys(3, 1, idx[4:]))])
    assert whole.shape == (8, 3, 24, 24) and torch.equal(whole, halves)


def test_an_epochs_draws_taken_with_its_order_are_each_batchs_own() -> None:
    """The training loop takes its batches' draws from the epoch's, taken once with the order (ahead, on a thread):
    for every batch of a rank's epoch, from a mid-epoch start, the last one short, they are the draws of the batch's
    own keys bit for bit, and so is the augmented batch, in every mode."""
    n, bs, seed = 1003, 37, 7
    images = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8)
    batches = Batches(TensorSource(images, torch.arange(n) % 10), bs, True, seed, 1, 3, draws=epoch_draws)
    norm = Normalizer(torch.zeros(3), torch.ones(3), None, torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC))
    augments = [BatchAugment(mode, 32, norm, 0.1, 0.3) for mode in ("paper", "shift", "modern")]
    for epoch, start in ((0, 0), (2, 4)):
        drawn, seen = batches.epoch_draws(epoch), 0
        assert drawn is not None
        for i, (x, _, idx) in enumerate(batches.epoch(epoch, start), start):
            rows, own = drawn.rows(batches.span(i)), keyed_random.keys(seed, epoch, idx)
            assert torch.equal(rows.key, own)
            for stream in AUGMENT_STREAMS:
                assert torch.equal(keyed_random.uniform(rows, stream), keyed_random.uniform(own, stream))
            assert torch.equal(keyed_random.normals(rows, PCA_STREAMS), keyed_random.normals(own, PCA_STREAMS))
            for augment in augments:
                assert torch.equal(augment(x, rows), augment(x, own)), augment.mode
            seen += len(idx)
        assert len(idx) < bs and seen == (-(-n // 3)) - start * bs
    assert Batches(TensorSource(images, torch.zeros(n)), bs, True, seed).epoch_draws(0) is None  # not asked for


def test_a_batchs_draws_are_hashed_in_one_grid_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every augmentation of a training batch hashes its keys once, as a grid of all its streams (on a GPU each op
    of the hash is a launch: one stream at a time, a store's batch took 182 ops, as one grid 123), and the draws are
    the ones drawn stream by stream, bit for bit."""
    key = keyed_random.keys(5, 1, torch.arange(40))
    draws = keyed_random.Draws(key, AUGMENT_STREAMS)
    for stream in (0, 2, 6, 99):  # 99: not in the grid, drawn from the key
        assert torch.equal(keyed_random.uniform(draws, stream), keyed_random.uniform(key, stream))
    assert torch.equal(keyed_random.randint(draws, 1, 17), keyed_random.randint(key, 1, 17))
    assert torch.equal(keyed_random.normals(draws, [10, 11, 12]), keyed_random.normals(key, [10, 11, 12]))
    hashed, real = [], keyed_random._mix
    monkeypatch.setattr(keyed_random, "_mix", lambda t: hashed.append(t.shape) or real(t))
    norm = Normalizer(torch.zeros(3), torch.ones(3), None, torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC))
    x, keys = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8), keyed_random.keys(1, 0, torch.arange(6))
    for mode in ("paper", "shift", "modern"):
        hashed.clear()
        BatchAugment(mode, 32, norm, 0.1, 0.3)(x, keys)
        assert hashed == [(6, len(AUGMENT_STREAMS))], (mode, hashed)
