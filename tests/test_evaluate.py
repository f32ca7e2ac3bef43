"""`alexnet evaluate`: JSON report, test-time augmentation, clear errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from alexnet.cli import main

from .conftest import FAST


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from .conftest import make_imagefolder

    root = tmp_path_factory.mktemp("eval")
    data = make_imagefolder(root / "data", classes=3, per_class=8, val_per_class=5)
    run = root / "run"
    args = ["train", "--data", str(data), "--out", str(run), *FAST, "--epochs", "2", "--set", "data.normalize=channel"]
    # lr 0.0002: at 0.002 the loss climbed to ~18 and, on a 2-core AVX-512 BF16/AMX CPU, the network died (the same
    # output for every image, so a 72 px view scored as the 67 px one); at 0.0002 train loss 2.48 -> 2.09
    assert main([*args, "--set", "optim.lr=0.0002"]) == 0
    yield run, data
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints: RAM the next files need (tests/conftest.py)


@pytest.mark.parametrize("tta", ["center", "flip", "10crop"])
def test_evaluate_json(trained_run: tuple[Path, Path], tta: str, capsys: pytest.CaptureFixture) -> None:
    run, _ = trained_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--tta", tta, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "loss", "n", "tta"} <= set(d)
    assert d["n"] == 15 and d["tta"] == tta
    assert 0 <= d["top1"] <= d["top5"] <= 1
    assert set(d["per_class"]) == {"class_0", "class_1", "class_2"}
    assert "paper" not in d  # not ImageNet


def test_evaluate_matches_training_metrics(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run, _ = trained_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # the paper recipe validates every epoch on the centre crop, the last on the paper's 10 patches (§4.1)
    assert [r["val_tta"] for r in rows] == ["center", "10crop"]
    best = max(rows, key=lambda r: r["val_top1"])
    capsys.readouterr()
    # training validated in fp32 (FAST: train.amp=none); evaluate's auto is bf16 where the CPU has it natively
    # the same views as that validation (the paper recipe's last one is its 10 patches: train.final_tta)
    assert main(["evaluate", str(run / "checkpoints" / "best.pt"), "--amp", "none", "--json", "--tta",
                 best["val_tta"]]) == 0  # fmt: skip
    d = json.loads(capsys.readouterr().out)
    assert d["top1"] == best["val_top1"]
    assert d["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_testing_above_the_training_resolution(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run, _ = trained_run
    results = {}
    for size in (None, 67, 72):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--json"] + (["--test-size", str(size)] if size else [])) == 0
        results[size] = json.loads(capsys.readouterr().out)
    assert results[67]["loss"] == results[None]["loss"]  # the training crop: the default path exactly
    assert results[72]["n"] == 15 and results[72]["loss"] != results[None]["loss"]  # a 72 px view of the same field


def test_evaluate_report_and_other_data(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run, data = trained_run
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "per-class top-1" in out
    assert main(["evaluate", str(run), "--data", str(data / "val")]) == 2  # the val folder itself: say how
    assert f"use --split-dir {data / 'val'}" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--split-dir", str(data / "val"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(list((data / "val").rglob("*.png")))
    assert main(["evaluate", str(run), "--split-dir", str(data / "val"), "--data", str(data)]) == 2  # one is ignored
    assert "give --data or --split-dir, not both" in capsys.readouterr().err


def test_a_run_whose_data_moved(trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    """evaluate, figures and report on a run whose folder was moved say so and name --data (once "data path not
    found: DIR", which reads as a typo in a path the user never typed)."""
    run, data = trained_run
    moved = data.with_name("moved")
    data.rename(moved)
    try:
        for cmd in (
            ["evaluate", str(run)],
            ["figures", str(run), "--out", str(run.parent / "f")],
            ["report", str(run)],
        ):
            assert main(cmd) == 2
            assert f"the run's data {data} is not there any more; pass --data DIR" in capsys.readouterr().err
        assert main(["evaluate", str(run), "--data", str(moved), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == 15
    finally:
        moved.rename(data)
    assert main(["evaluate", str(run), "--json"]) == 0  # the folder indexed again where it is (as other tests find it)
    capsys.readouterr()


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "/no/such/run"], "no such run directory or checkpoint"),
        (["evaluate", "{run}", "--data", "/no/such/data"], "data path not found"),
        (["evaluate", "{run}", "--test-size", "40"], "below alexnet's minimum input of 67"),
    ],
)
def test_evaluate_errors(trained_run: tuple[Path, Path], args: list[str], message: str,
                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    run, _ = trained_run
    assert main([a.format(run=run) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "corrupt or truncated" in err


def test_evaluate_runs_on_the_compute_path_it_is_given(trained_run: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    run, _ = trained_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--amp", "none"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--json", "--amp", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert bf16["n"] == fp32["n"] == 15 and bf16["loss"] != fp32["loss"]  # really ran in bf16
    assert abs(bf16["loss"] - fp32["loss"]) < 0.05  # and still the same network
    assert main(["evaluate", str(run), "--amp", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a GPU" in capsys.readouterr().err


def test_published_figures_say_their_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """ImageNet's classes get the paper's Table 2 figures beside the result, named as what they are (10 patches),
    and a result measured on other views says that the protocols differ (once the centre crop's result stood
    beside the 10-patch figures as if comparable)."""
    from alexnet.data.classes import imagenet_classes
    from alexnet.data.preprocess import Preprocess
    from alexnet.io.weights import Loaded, save_safetensors
    from alexnet.models import create_model

    from .conftest import make_imagefolder

    wnids = [w for w, _ in imagenet_classes()]
    weights = tmp_path / "imagenet.safetensors"
    pre = Preprocess(256, 227, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    save_safetensors(Loaded(create_model("alexnet", 1000).eval(), "alexnet", wnids, pre, None, "test"), weights)
    val = make_imagefolder(tmp_path / "data", classes=2, per_class=0, val_per_class=1, size=(240, 230)) / "val"
    for i in range(2):  # two of ImageNet's classes, the rest absent (a validation split may lack a class)
        (val / f"class_{i}").rename(val / wnids[i])
    said = {}
    for tta in ("center", "10crop"):
        assert main(["evaluate", str(weights), "--split-dir", str(val), "--tta", tta, "--device", "cpu"]) == 0
        said[tta] = capsys.readouterr().out
    published = "published, paper, Table 2: 1 CNN, ILSVRC-2012 val, 10 patches: top-1 accuracy 59.3 % (error 40.7 %)"
    assert published in said["center"] and published in said["10crop"]
    assert "top-5 accuracy 81.8 % (error 18.2 %)" in said["center"]
    assert ("a different protocol: the published figures are from 10 patches, this result from the centre crop "
            "(--tta 10crop measures as they were measured)") in said["center"]  # fmt: skip
    assert "a different protocol" not in said["10crop"]
    assert main(["evaluate", str(weights), "--split-dir", str(val), "--json", "--device", "cpu"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tta"] == "center" and d["published"]["tta"] == "10crop" and d["published"]["top1"] == pytest.approx(0.593)
