"""The cached, parallel folder index (data/index.py): the same samples as a plain listing, reused while the
folder is unchanged, rebuilt when it changes (never trusted stale), cached elsewhere when the data folder is
read-only, and built by rank 0 alone under torchrun."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from alexnet.data import folder, index
from alexnet.data.folder import scan_folder

from .conftest import make_imagefolder


def _plain(split: Path) -> list[str]:  # what 0.1's scan listed, in its order
    return [str(p) for c in sorted(d for d in split.iterdir() if d.is_dir()) for p in sorted(c.rglob("*"))
            if p.is_file() and not p.name.startswith(".")]  # fmt: skip


def _age(split: Path) -> None:
    """Date every directory 10 s back: older than the index's racy window (a fresh folder is re-listed)."""
    for d in [split, *[p for p in split.rglob("*") if p.is_dir()]]:
        os.utime(d, ns=(d.stat().st_atime_ns, d.stat().st_mtime_ns - 10_000_000_000))


def test_cached_index_is_reused_and_rebuilt_when_the_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = make_imagefolder(tmp_path / "d", classes=3, per_class=4) / "train"
    (split / "class_1" / "sub").mkdir()
    (split / "class_1" / "sub" / "deep.png").write_bytes((split / "class_1" / "img_0.png").read_bytes())
    calls = []
    monkeypatch.setattr(folder, "build", lambda *a: calls.append(a) or index.build(*a))
    scan_folder(split, check=False)
    assert len(calls) == 1
    assert scan_folder(split, check=False) and len(calls) == 2  # just written: within the racy window, listed again
    _age(split)
    first = scan_folder(split, check=False)
    calls.clear()
    assert [p for p, _ in first.samples] == _plain(split) and (split / index.CACHE_NAME).is_file()
    assert scan_folder(split, check=False).samples == first.samples and not calls  # warm: read, not listed
    (split / "class_2" / "new.png").write_bytes((split / "class_2" / "img_0.png").read_bytes())
    again = scan_folder(split, check=False)
    assert len(calls) == 1 and str(split / "class_2" / "new.png") in [p for p, _ in again.samples]
    (split / "class_1" / "sub" / "deep.png").unlink()  # a change in a sub-folder
    assert str(split / "class_1" / "sub" / "deep.png") not in [p for p, _ in scan_folder(split, check=False).samples]
    (split / "class_3").mkdir()  # a new class folder
    (split / "class_3" / "a.png").write_bytes((split / "class_2" / "img_0.png").read_bytes())
    assert scan_folder(split, check=False).classes[-1] == "class_3" and len(calls) == 3


def test_folders_that_are_not_classes(tmp_path: Path) -> None:
    """A zip made on a Mac carries __MACOSX/ (resource forks, "._" files): never a class (it became one, an
    empty 4th output). A training class folder without images is refused in one line, as torchvision's
    ImageFolder does (it was trained as a class no image could ever teach); a val split may lack a class."""
    from alexnet.errors import UserError

    root = make_imagefolder(tmp_path / "d", classes=2, per_class=2, val_per_class=1)
    (root / "train" / "__MACOSX" / "class_0").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "class_0" / "._img_0.png").write_bytes(b"\x00\x05\x16\x07")
    assert scan_folder(root / "train", check=False).classes == ["class_0", "class_1"]
    (root / "train" / "class_2").mkdir()
    with pytest.raises(UserError, match=r"train: class folders without images: class_2 \(a class with no image"):
        scan_folder(root / "train", check=False)
    (root / "val" / "class_2").mkdir()
    assert len(scan_folder(root / "val", ["class_0", "class_1", "class_2"], check=False).samples) == 2


def test_a_split_or_a_file_given_as_the_data_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--data DIR/train` (a common first try) says the data is DIR; a file says it is a file (both once said
    "DIR/train/train: no such directory", leaving the user to work out why)."""
    from alexnet.cli import main

    root = make_imagefolder(tmp_path / "d", classes=2, per_class=2, val_per_class=1)
    (tmp_path / "notes.txt").write_text("x")
    for given, words in ((root / "train", f"{root / 'train'} is a split itself: the data is its parent, {root}"),
                         (tmp_path / "notes.txt", "notes.txt is a file; the data is a folder holding train/ and val/")):  # fmt: skip
        for cmd in (["train", "--out", str(tmp_path / "run")], ["prepare", "--out", str(tmp_path / "store")]):
            assert main([*cmd, "--data", str(given)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_a_flat_folder_or_class_folders_without_the_split_are_named(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The next first tries: a folder of images, and class folders without train/ and val/ (both once said only
    "DIR/train: no such directory")."""
    from alexnet.cli import main

    root = make_imagefolder(tmp_path / "d", classes=2, per_class=2, val_per_class=1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (root / "train" / "class_0").iterdir():
        (flat / f.name).write_bytes(f.read_bytes())
    classes = (root / "train").rename(tmp_path / "classes")
    for given, words in ((flat, f"{flat} holds 2 images directly: sort them into class folders"),
                         (classes, f"{classes} holds class folders without the split: move them into {classes}/train")):  # fmt: skip
        for cmd in (["train", "--out", str(tmp_path / "run")], ["prepare", "--out", str(tmp_path / "store")]):
            assert main([*cmd, "--data", str(given)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_read_only_data_is_indexed_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_imagefolder(tmp_path / "d", classes=2, per_class=2) / "train"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real = index.cache_paths
    monkeypatch.setattr(index, "cache_paths", lambda s: [Path("/proc/alexnet-not-writable.json"), real(s)[1]])
    scan_folder(split, check=False)
    cached = list((tmp_path / "cache" / "alexnet").glob("index-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["root"] == str(split.resolve())
    assert not (split / index.CACHE_NAME).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, split: str, out: str) -> None:
    import alexnet.data.folder as f
    from alexnet.data import index as ix

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    built = []
    f.build = lambda *a: built.append(rank) or ix.build(*a)
    try:
        samples = f.scan_folder(Path(split), check=False, rank=rank, world=2).samples
        Path(out, f"{rank}.json").write_text(json.dumps({"built": len(built), "n": len(samples)}))
    finally:
        torch.distributed.destroy_process_group()


def test_rank_0_builds_the_index_and_the_others_read_it(tmp_path: Path) -> None:
    split = make_imagefolder(tmp_path / "d", classes=3, per_class=3) / "train"
    _age(split)
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(split), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"built": 1, "n": 9} and r1 == {"built": 0, "n": 9}


def test_statistics_are_computed_once_and_reused_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from alexnet.cli import main

    from .conftest import FAST

    data = make_imagefolder(tmp_path / "d")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST]) == 0
    assert "computing them from up to" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "computing them from up to" not in capsys.readouterr().err  # the run's own stats.npz
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["stats"] == str((run / "stats.npz").absolute())


SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs ../shared/data/imagenet-samples")
def test_computed_and_built_in_imagenet_statistics_share_one_convention() -> None:
    """Eigenvalues of the RGB covariance of [0, 1] pixels, eigenvectors as columns: computed on 250 real ImageNet
    images they land within 20 % of the built-in values (fb.resnet.torch's), with the same principal axes.
    Measured: [0.187, 0.0166, 0.0037] against [0.2175, 0.0188, 0.0045]."""
    import numpy as np

    from alexnet.data.images import load_rgb
    from alexnet.data.stats import ColourStats, compute_stats
    from alexnet.data.transforms import resize_square

    r = resize_square(128)
    x = torch.stack([r(load_rgb(f)) for f in sorted(SAMPLES.glob("*.JPEG"))])
    got, ref = compute_stats([x[i : i + 64] for i in range(0, len(x), 64)], "samples"), ColourStats.imagenet()
    np.testing.assert_allclose(got.eigval, ref.eigval, rtol=0.2)
    for i in range(3):  # the same axes (an eigenvector's sign is arbitrary)
        assert abs(float(got.eigvec[:, i] @ ref.eigvec[:, i])) > 0.95, i
