"""`alexnet prepare-val`: ImageNet's flat validation folder into class folders, from Kaggle's CSV or the devkit's
ground truth with its class order (a wnid list or meta.mat); every mismatch refused before anything moves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main

WNIDS = ["n01440764", "n02102040", "n02979186"]  # devkit order (ILSVRC2012_ID 1, 2, 3)
TRUTH = [2, 1, 3, 3, 1, 2, 2]  # image i -> ILSVRC2012_ID


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, len(TRUTH) + 1):
        Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG", "JPEG")
    return val


def _csv(path: Path, n: int = len(TRUTH)) -> Path:
    rows = [
        f"ILSVRC2012_val_{i:08d},{WNIDS[t - 1]} 10 20 30 40 {WNIDS[t - 1]} 1 2 3 4" for i, t in enumerate(TRUTH[:n], 1)
    ]
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


def _layout(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.name for f in d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()}


def _want() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, t in enumerate(TRUTH, 1):
        out.setdefault(WNIDS[t - 1], []).append(f"ILSVRC2012_val_{i:08d}.JPEG")
    return dict(sorted(out.items()))


def test_kaggle_csv_hard_links_into_another_folder(flat: Path, tmp_path: Path) -> None:
    out = tmp_path / "imagenet" / "val"
    assert (
        main(["prepare-val", str(flat), "--labels", str(_csv(tmp_path / "LOC_val_solution.csv")), "--out", str(out)])
        == 0
    )
    assert _layout(out) == _want()
    a, b = flat / "ILSVRC2012_val_00000001.JPEG", out / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG"
    assert os.path.samefile(a, b)  # a hard link: no copy of 6 GB
    assert not (out / ".alexnet-link-probe").exists()


@pytest.mark.parametrize("order", ["txt", "mat"])
def test_devkit_ground_truth_moves_in_place(flat: Path, tmp_path: Path, order: str) -> None:
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("\n".join(map(str, TRUTH)) + "\n")
    if order == "txt":
        synsets = tmp_path / "synsets.txt"
        synsets.write_text("\n".join(WNIDS) + "\n")
    else:  # meta.mat's synsets: the 1000 leaves first (here 3), then inner nodes with larger ids
        from scipy.io import savemat

        synsets = tmp_path / "meta.mat"
        rows = [(i, w, "name") for i, w in enumerate(WNIDS, 1)] + [(1001, "n00001740", "entity")]
        arr = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
        savemat(str(synsets), {"synsets": arr})
    assert main(["prepare-val", str(flat), "--labels", str(gt)]) == 2  # class numbers need their order
    assert main(["prepare-val", str(flat), "--labels", str(gt), "--synsets", str(synsets)]) == 0
    assert _layout(flat) == _want()
    assert not [f for f in flat.iterdir() if f.is_file()]  # moved, not copied


def test_mismatches_are_refused_and_nothing_changes(flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = sorted(p.name for p in flat.iterdir())
    short = _csv(tmp_path / "short.csv", n=len(TRUTH) - 2)
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    extra = _csv(tmp_path / "extra.csv")
    extra.write_text(extra.read_text() + f"ILSVRC2012_val_{99:08d},{WNIDS[0]} 1 2 3 4\n")
    capsys.readouterr()
    for labels, needle in [(short, "2 images without a label"), (tmp_path / "junk.txt", "unknown label format"),
                           (extra, "1 labels without an image"), (tmp_path / "none.csv", "no such label file")]:  # fmt: skip
        assert main(["prepare-val", str(flat), "--labels", str(labels)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in flat.iterdir()) == before
    out = tmp_path / "sorted"
    assert main(["prepare-val", str(flat), "--labels", str(_csv(tmp_path / "ok.csv")), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["prepare-val", str(flat), "--labels", str(tmp_path / "ok.csv"), "--out", str(out)]) == 0  # again
    assert "already sorted, nothing to do" in capsys.readouterr().out and _layout(out) == _want()
    other = out / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG"  # another file where a link would go
    other.unlink()
    other.write_bytes(b"not the same image")
    assert main(["prepare-val", str(flat), "--labels", str(tmp_path / "ok.csv"), "--out", str(out)]) == 2
    assert f"{other} exists and is not" in capsys.readouterr().err and other.read_bytes() == b"not the same image"


@pytest.mark.parametrize("mode", ["move", "copy"])
def test_a_sort_stopped_half_way_finishes_when_run_again(flat: Path, tmp_path: Path, mode: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Ctrl-C after 3 of 7 files: the next run once refused (moved files counted as "labels without an image"),
    leaving a half-sorted folder; now it places the other 4 (a half-written copy's temporary is removed)."""
    from alexnet.data import valprep
    from alexnet.io.atomic import temp_name

    real, calls = valprep._place, []

    def stop_after_three(a: Path, b: Path, how: str) -> None:
        if len(calls) == 3:
            if how == "copy":  # what a copy stopped half-way leaves
                temp_name(b).write_bytes(a.read_bytes()[:10])
            raise KeyboardInterrupt
        calls.append(a)
        real(a, b, how)

    monkeypatch.setattr(valprep, "_place", stop_after_three)
    out = flat if mode == "move" else tmp_path / "copied"
    args = ["prepare-val", str(flat), "--labels", str(_csv(tmp_path / "ok.csv")), "--out", str(out), "--mode", mode]
    assert main(args) == 130  # as after Ctrl-C
    monkeypatch.setattr(valprep, "_place", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "3 of them by an earlier run" in capsys.readouterr().out
    assert _layout(out) == _want()
    if mode == "move":
        assert not [f for f in flat.iterdir() if f.is_file()]
    else:
        for wnid, names in _want().items():
            assert all((out / wnid / n).read_bytes() == (flat / n).read_bytes() for n in names)


def test_label_and_synsets_files_that_are_wrong_name_themselves(flat: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Each was once a riddle: 'utf-8' codec can't decode byte 0xff, invalid literal for int(), 'no such label
    file' for a folder, 'no such file' for an --out the file system refuses; a CSV saved with a byte-order mark
    (Excel's "CSV UTF-8") was an unknown label format."""
    gt, synsets, binary = tmp_path / "gt.txt", tmp_path / "synsets.txt", tmp_path / "meta.bin"
    gt.write_text("2\n1\nabc\n")
    synsets.write_text("\n".join(WNIDS) + "\n")
    binary.write_bytes(b"\xff\xfe\x00\x01 not text")
    header_only = tmp_path / "header.csv"
    header_only.write_text("ImageId,PredictionString\n")
    before = sorted(p.name for p in flat.iterdir())
    cases = [
        (["--labels", str(gt), "--synsets", str(binary)], f"{binary}: not a text synsets file (byte 0xff at offset 0"),
        (["--labels", str(gt), "--synsets", str(synsets)], f"{gt}, line 3: 'abc' is not a class number 1..3"),
        (["--labels", str(binary)], f"{binary}: not a text label file"),
        (["--labels", str(tmp_path)], f"{tmp_path} is a directory, not a label file"),
        (["--labels", str(_csv(tmp_path / "ok.csv")), "--out", "/proc/nope"], "cannot create the folder /proc/nope"),
        (["--labels", str(tmp_path / "ok.csv"), "--out", str(gt)], f"--out {gt} is a file"),
        # a --synsets that the CSV's labels do not need is still read (it was ignored, even when missing)
        (
            ["--labels", str(tmp_path / "ok.csv"), "--synsets", str(tmp_path / "nosuch.mat")],
            f"no such synsets file: {tmp_path / 'nosuch.mat'}",
        ),
        (["--labels", str(header_only)], f"{header_only}: no labels in it"),  # it sorted nothing, and said so with 0
    ]
    for args, says in cases:
        if "/proc/nope" in args and not Path("/proc/self").is_dir():
            continue  # only Linux has a /proc that takes no new folders
        assert main(["prepare-val", str(flat), *args]) == 2, args
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in flat.iterdir()) == before
    bom = tmp_path / "LOC_val_solution.csv"  # what Excel's "CSV UTF-8" writes
    bom.write_bytes(b"\xef\xbb\xbf" + _csv(tmp_path / "plain.csv").read_bytes())
    out = tmp_path / "sorted"
    assert main(["prepare-val", str(flat), "--labels", str(bom), "--out", str(out)]) == 0
    assert _layout(out) == _want()
