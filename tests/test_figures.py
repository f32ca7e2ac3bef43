"""`alexnet figures` and `alexnet report`: real PNGs derived from the model and data."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from alexnet.cli import main
from alexnet.inference.plots import BATCH, DEFAULT_FIGURES, filters_figure, nearest
from alexnet.io.weights import load_weights

from .conftest import FAST, make_imagefolder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("figs")
    data = make_imagefolder(root / "data", classes=4, per_class=10, val_per_class=4)
    run = root / "run"
    args = ["train", "--data", str(data), "--out", str(run), *FAST]
    # lr 0.0002: at 0.002 the network died on a 2-core AVX-512 BF16/AMX CPU (fc7 the same for every image)
    args += "--epochs 2 --set data.normalize=channel --set optim.lr=0.0002".split()
    assert main(args) == 0
    yield run, data
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints: RAM the next files need (tests/conftest.py)


def _check_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert 400 <= w <= 3000 and 250 <= h <= 3000, (path.name, w, h)
    assert a.std() > 10, f"{path.name} looks blank"
    return a


def test_all_figures(folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = folder_run
    out = tmp_path / "figs"
    assert main(["figures", str(run), "--out", str(out)]) == 0
    for name in DEFAULT_FIGURES:
        _check_png(out / f"{name}.png")
    assert main(["figures", str(run), "--out", str(out), "--which", "filters,bogus"]) == 2
    assert "unknown figure bogus" in capsys.readouterr().err
    # a second run into the same folder replaces nothing without --force (it once overwrote every PNG)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == sorted([f"{f}.png" for f in DEFAULT_FIGURES] + ["neighbours.json"])
    assert main(["figures", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"alexnet figures: error: {out / 'filters.png'} exists (and 5 more); "
                                               "pass --force to overwrite, or another --out")  # fmt: skip
    (out / "filters.png").write_bytes(b"mine")
    assert main(["figures", str(run), "--out", str(out), "--which", "filters"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before | {"filters.png": b"mine"}
    assert main(["figures", str(run), "--out", str(out), "--which", "filters", "--force"]) == 0
    _check_png(out / "filters.png")


def test_a_disk_that_fills_under_a_figure_keeps_the_old_one(folder_run: tuple[Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    from .conftest import fill_the_disk

    out = tmp_path / "figs"
    assert main(["figures", str(folder_run[0]), "--out", str(out), "--which", "filters,curves"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with monkeypatch.context() as m:
        fill_the_disk(m, after=4096, under="figs")
        assert main(["figures", str(folder_run[0]), "--out", str(out), "--which", "filters,curves", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # whole, and no temporary file left


def test_report_of_a_run_without_a_validated_epoch_or_with_an_edited_config(folder_run: tuple[Path, Path],
                                                                           tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Once internal errors: a run stopped before its first validation (train.eval_every), and a config.yaml
    edited into invalid YAML or into something else (report, and the hub export that reads it)."""
    run = tmp_path / "run"
    shutil.copytree(folder_run[0], run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("val_")})
                                               + "\n" for r in rows))  # fmt: skip
    assert main(["report", str(run), "--no-data-figures"]) == 2
    assert f"{run}: no validated epoch yet" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run / "config.yaml"
    for text, said in (
        ("model: {name: alexnet\n", "not valid YAML"),
        ("model: {name: alexnet}\n", "not a run's config"),
    ):
        config.write_text(text)
        for cmd in (["report", str(run), "--no-data-figures"], ["export", str(run), "--format", "hub", "--out",
                                                                  str(tmp_path / "hub")]):  # fmt: skip
            assert main(cmd) == 2, cmd
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{config}: {said}" in err, err
    assert not (tmp_path / "hub").exists() and not (run / "report.md").exists()


def test_figures_into_a_file_is_one_line(folder_run: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["figures", str(folder_run[0]), "--out", str(notes)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"alexnet figures: error: {notes} is a file; --out names the folder the figures go in"
    assert notes.read_text() == "mine"


def test_figures_of_a_weights_file(folder_run: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """An exported .safetensors has no training curves and no dataset: what cannot be drawn is refused before
    anything is written (once filters.png was written, then the command failed on the curves), and the default
    set draws the others with --data."""
    run, data = folder_run
    st = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--out", str(st)]) == 0
    out = tmp_path / "figs"
    for which, words in ((["--which", "filters,curves"], "the curves figure needs a run directory"),
                         ([], "a weights file does not know its data; pass --data DIR")):  # fmt: skip
        assert main(["figures", str(st), "--out", str(out), *which]) == 2
        assert words in capsys.readouterr().err
        assert not out.exists()
    assert main(["figures", str(st), "--out", str(out), "--data", str(data)]) == 0
    assert "curves: skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{f}.png" for f in DEFAULT_FIGURES if f != "curves")


def test_curves_of_a_run_being_written(folder_run: tuple[Path, Path], tmp_path: Path) -> None:
    """A run's metrics.jsonl while a row is being written (or after a kill mid-write) ends in a torn line:
    figures and report drew nothing ("Expecting value: line 1 column 26"); they now leave that line out,
    and name any other line that is not a row."""
    from alexnet.engine.runlog import read_metrics
    from alexnet.errors import UserError
    from alexnet.inference.plots import curves_figure

    run, _ = folder_run
    rows = (run / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(rows + '{"epoch": 3, "val_to')
    assert read_metrics(tmp_path) == [json.loads(r) for r in rows.splitlines()]
    _check_png(curves_figure(tmp_path, tmp_path))
    (tmp_path / "metrics.jsonl").write_text("Traceback (most recent call last):\n" + rows)
    with pytest.raises(UserError, match="metrics.jsonl: line 1 is not a metrics row"):
        read_metrics(tmp_path)


def test_filters_follow_conv1(folder_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = folder_run
    loaded = load_weights(str(run))
    a = _check_png(filters_figure(loaded, _mk(tmp_path / "a")))
    with torch.no_grad():
        loaded.model.features.conv1.weight[:48] = torch.randn_like(loaded.model.features.conv1.weight[:48])
    b = _check_png(filters_figure(loaded, _mk(tmp_path / "b")))
    assert a.shape == b.shape and np.abs(a - b).max() > 0
    h = a.shape[0]
    assert np.abs(a[h // 2 :] - b[h // 2 :]).max() == 0  # tower B's half of the picture is unchanged


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def test_neighbours_use_the_features_command_vectors(folder_run: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    run, data = folder_run
    out = tmp_path / "figs"
    assert main(["figures", str(run), "--out", str(out), "--which", "neighbours"]) == 0
    record = json.loads((out / "neighbours.json").read_text())
    # the figure's batches: in bf16 (auto, where the CPU has it natively) a vector can depend on its batch
    one = ["--batch-size", str(BATCH)]
    assert main(["features", str(run), str(data / "train"), "--out", str(tmp_path / "train.npz"), *one]) == 0
    assert main(["features", str(run), str(data / "val"), "--out", str(tmp_path / "val.npz"), *one]) == 0
    tr, va = np.load(tmp_path / "train.npz"), np.load(tmp_path / "val.npz")
    val_files = list(va["files"])
    for row in record:
        q = val_files.index(row["query"])
        idx = nearest(torch.from_numpy(va["features"][q : q + 1]), torch.from_numpy(tr["features"]), 6)[0]
        assert [str(tr["files"][i]) for i in idx] == row["neighbours"]


def test_report_links_every_figure(folder_run: tuple[Path, Path]) -> None:
    run, _ = folder_run
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(x).stem for x in links} == set(DEFAULT_FIGURES)
    for link in links:
        _check_png(run / link)
    page = (run / "report.html").read_text()
    for link in links:
        assert f'src="{link}"' in page
    assert "paper, Table 2: 1 CNN, ILSVRC-2012 val, 10 patches" in md and "Configuration" in md
    assert "4 classes, 2 epochs." in md and "## Figures\n\n### Training curves\n" in md  # figures under Figures
    assert "<h3>Training curves</h3>" in page


def test_report_says_when_a_run_stopped_before_its_plan(tmp_path: Path) -> None:
    from alexnet.commands.report import build_report, to_markdown

    run = tmp_path / "run"
    run.mkdir()
    row = {"epoch": 1, "seconds": 60.0, "images_per_sec": 100.0, "val_top1": 0.5, "val_top5": 0.9, "val_loss": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    cfg = {"model": {"name": "alexnet"}, "data": {"path": "d"}, "train": {"epochs": 90}, "recipe": "paper"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    md = to_markdown(build_report(run, ["a", "b"], run / "figures"))
    assert f"2 classes, 1 of 90 epochs (not finished: `alexnet train --resume {run}` goes on)." in md


def test_report_needs_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
