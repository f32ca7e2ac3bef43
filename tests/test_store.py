"""The prepared store: same images as the folder, resumable writing, checksums, --data STORE everywhere."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.data import store as store_mod
from alexnet.data.folder import FolderDataset, scan_folder
from alexnet.data.transforms import resize_square
from alexnet.errors import UserError
from alexnet.io import checkpoint as ckpt_io

from .conftest import FAST

# explicit normalisation, no colour noise: folder and store runs must then be bit-identical
SAME = [*FAST, "--epochs", "2", "--batch-size", "4", "--set", "data.normalize=channel", "--set", "data.pca_noise=0",
        "--set", "data.mean=[0.5,0.5,0.5]", "--set", "data.std=[0.25,0.25,0.25]", "--set", "optim.lr=0.002"]  # fmt: skip


def test_raw_store_holds_the_same_pixels(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "store"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "72", "--workers", "1"]) == 0
    assert "train 18, val 9" in capsys.readouterr().out
    images, labels, classes = store_mod.open_store(out, "train")
    index = scan_folder(tiny_folder / "train")
    ds = FolderDataset(index, resize_square(72), 72)
    assert classes == index.classes and len(images) == 18
    for i in (0, 7, 17):
        assert torch.equal(images[i], ds[i][0]) and int(labels[i]) == ds[i][1]
    batch = images[torch.tensor([5, 2, 9])]
    assert batch.shape == (3, 3, 72, 72) and torch.equal(batch[1], ds[2][0])
    assert store_mod.verify(out) == []
    with open(out / "train.u8", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert store_mod.verify(out) == ["train.u8"]


def test_jpeg_store_is_close(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "jstore"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "72", "--format", "jpeg",
                 "--quality", "95", "--workers", "1"]) == 0  # fmt: skip
    images, _, _ = store_mod.open_store(out, "val")
    ref = FolderDataset(scan_folder(tiny_folder / "val"), resize_square(72), 72)[4][0]
    assert images[4].shape == (3, 72, 72)
    assert (images[4].float() - ref.float()).abs().mean() < 12  # lossy, but the same picture
    assert (out / "val.jpeg").stat().st_size < (3 * 72 * 72 * 9)
    # the maintained decoder (TorchCodec, where it loads) and torchvision's deprecated one: the same pixels
    import sys
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    ids = torch.arange(len(images))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        blobs = [
            torch.from_numpy(np.array(images.data[images.offsets[i] : images.offsets[i + 1]])) for i in ids.tolist()
        ]
        assert torch.equal(images[ids], torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB)))
    if sys.platform == "linux":  # a dependency there: it must be the decoder in use
        assert store_mod.jpeg_decoder().backend == "torchcodec"


def test_jpeg_stores_fall_back_to_torchvision_without_torchcodec(tiny_folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out = tmp_path / "jstore"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "72", "--format", "jpeg",
                 "--workers", "1"]) == 0  # fmt: skip
    images, _, _ = store_mod.open_store(out, "val")
    want = images[torch.arange(len(images))]
    for name in ("torchcodec", "torchcodec.decoders"):  # the import fails, as where it is absent
        monkeypatch.setitem(__import__("sys").modules, name, None)
    store_mod.jpeg_decoder.cache_clear()
    try:
        assert store_mod.jpeg_decoder().backend == "torchvision"
        assert torch.equal(images[torch.arange(len(images))], want)
    finally:
        store_mod.jpeg_decoder.cache_clear()


def test_training_on_the_store_equals_training_on_the_folder(tiny_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(store), "--size", "72", "--workers", "1"]) == 0
    a, b = tmp_path / "folder_run", tmp_path / "store_run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(a), *SAME]) == 0
    assert main(["train", "--data", str(store), "--out", str(b), *SAME]) == 0
    ca, cb = ckpt_io.load(a / "checkpoints" / "last.pt"), ckpt_io.load(b / "checkpoints" / "last.pt")
    wa, wb = ca["model"], cb["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert ca["train_set"] == cb["train_set"] and ca["train_set"].startswith("18 images")  # resumes either way
    assert main(["evaluate", str(b), "--json"]) == 0
    assert main(["pca-stats", "--data", str(store)]) == 0
    assert (store / "alexnet-stats.npz").is_file()


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_prepare_again_changes_nothing(tiny_folder: Path, tmp_path: Path, fmt: str) -> None:
    """A second prepare of a complete store (a script that always prepares first) once wrote every label as 0,
    and a JPEG store's offsets as 0, under valid checksums."""
    out = tmp_path / "store"
    store_mod.prepare(str(tiny_folder), str(out), size=72, fmt=fmt, workers=1, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.name != ".lock"}
    store_mod.prepare(str(tiny_folder), str(out), size=72, fmt=fmt, workers=1, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.name != ".lock"} == before
    assert store_mod.verify(out) == []
    images, labels, _ = store_mod.open_store(out, "val")
    assert labels.tolist() == [y for _, y in scan_folder(tiny_folder / "val").samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert images[torch.arange(9)].shape == (9, 3, 72, 72)
    np.save(out / "val.labels.npy", np.zeros(9, dtype=np.int64))  # what the second prepare wrote: refused
    with pytest.raises(UserError, match="every val label is 0 .3 classes.: written by an older `alexnet prepare`"):
        store_mod.open_store(out, "val")
    files = json.loads((out / "val.files.json").read_text())  # a val split that really holds the first class only
    (out / "val.files.json").write_text(
        json.dumps([f.replace("class_1", "class_0").replace("class_2", "class_0") for f in files])
    )
    assert store_mod.open_store(out, "val")[1].tolist() == [0] * 9


def test_a_prepare_stopped_in_val_keeps_the_train_labels(tiny_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Stopped after train was finished: the resume once wrote train's labels again from nothing (all 0). And
    val's progress file removed (by hand): what val holds has no labels then, so val is written again."""
    out, real = tmp_path / "store", store_mod._save_manifest

    def stop_in_val(dst: Path, manifest: dict) -> None:
        real(dst, manifest)
        if "val" in manifest["splits"] and manifest["splits"]["val"]["done"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_save_manifest", stop_in_val)
    with pytest.raises(KeyboardInterrupt):
        store_mod.prepare(str(tiny_folder), str(out), size=72, workers=1, chunk=5, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["train"]["done"] == 18 and m["splits"]["val"]["done"] == 5 and not m["complete"]
    (out / ".val.progress.npz").unlink()
    monkeypatch.setattr(store_mod, "_save_manifest", real)
    store_mod.prepare(str(tiny_folder), str(out), size=72, workers=1, chunk=5, progress=False)
    for split in ("train", "val"):
        images, labels, _ = store_mod.open_store(out, split)
        index = scan_folder(tiny_folder / split)
        ds = FolderDataset(index, resize_square(72), 72)
        assert labels.tolist() == [y for _, y in index.samples], split
        assert all(torch.equal(images[i], ds[i][0]) for i in range(len(ds))), split
    assert store_mod.verify(out) == []


def test_interrupted_prepare_resumes(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store"
    calls = {"n": 0}
    real = store_mod._save_manifest

    def crash_after_two_chunks(dst: Path, manifest: dict) -> None:
        real(dst, manifest)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C

    monkeypatch.setattr(store_mod, "_save_manifest", crash_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        store_mod.prepare(str(tiny_folder), str(out), size=72, workers=1, chunk=5, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and m["splits"]["train"]["done"] == 10
    with pytest.raises(Exception, match="incomplete"):
        store_mod.open_store(out, "train")
    monkeypatch.setattr(store_mod, "_save_manifest", real)
    other = shutil.copytree(tiny_folder, tmp_path / "other")  # the same classes and counts, another folder: a
    before = (out / "manifest.json").read_text()  # resume from it once went on writing its images into the store
    with pytest.raises(UserError, match=f"is a store of {tiny_folder.resolve()}, not of {other}"):
        store_mod.prepare(str(other), str(out), size=72, workers=1, chunk=5, progress=False)
    assert (out / "manifest.json").read_text() == before
    store_mod.prepare(str(tiny_folder), str(out), size=72, workers=1, chunk=5, progress=False)
    images, labels, _ = store_mod.open_store(out, "train")
    ds = FolderDataset(scan_folder(tiny_folder / "train"), resize_square(72), 72)
    assert len(images) == 18
    for i in range(18):
        assert torch.equal(images[i], ds[i][0]) and int(labels[i]) == ds[i][1]
    assert np.array_equal(np.load(out / "train.labels.npy"), labels.numpy())
    before = (out / "manifest.json").read_text()
    if sys.platform != "win32":  # a second prepare while one runs (its lock held as that process holds it)
        import fcntl

        with open(out / ".lock", "a+b") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(UserError, match=f"another process is preparing a store in {out}"):
                store_mod.prepare(str(tiny_folder), str(out), size=72, workers=1, chunk=5, progress=False)
        assert (out / "manifest.json").read_text() == before
    first = tmp_path / "first"  # stopped before its first manifest: its own files (and lock) only; resumed

    def stop_at_once(dst: Path, manifest: dict) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_save_manifest", stop_at_once)
    with pytest.raises(KeyboardInterrupt):
        store_mod.prepare(str(tiny_folder), str(first), size=72, workers=1, chunk=5, progress=False)
    assert not (first / "manifest.json").exists() and (first / ".lock").exists()
    monkeypatch.setattr(store_mod, "_save_manifest", real)
    assert store_mod.prepare(str(tiny_folder), str(first), size=72, workers=1, chunk=5, progress=False)["complete"]


def test_prepare_never_writes_among_other_files(tiny_folder: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--out naming the data folder itself, a folder of the user's, or a file: refused before any work, untouched."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tiny_folder) for p in tiny_folder.rglob("*"))
    for out, says in ((tiny_folder, "not a store's (e.g. "), (mine, "not a store's (e.g. notes.txt)"),
                      (mine / "notes.txt", "is a file; --out names the folder")):  # fmt: skip
        assert main(["prepare", "--data", str(tiny_folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    # a size no memory holds (about 30 GB an image at 100000 px) was a MemoryError in the workers
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(tmp_path / "big"), "--size", "100000"]) == 2
    assert capsys.readouterr().err.strip() == "alexnet prepare: error: --size must be 1 to 4096 pixels, got 100000"
    assert not (tmp_path / "big").exists()
    assert sorted(p.relative_to(tiny_folder) for p in tiny_folder.rglob("*")) == before
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"


def test_a_damaged_store_is_named(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A manifest that is not JSON (or lacks its fields), a cut image file, a labels file that is not one: one line
    naming the store (the first was "Expecting value: line 1 column 1" naming nothing, the others internal errors)."""
    good = tmp_path / "store"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(good), "--size", "72", "--workers", "1"]) == 0
    damage = {
        "manifest.json": (b"{not json", "manifest.json: damaged store manifest (Expecting property name"),
        "train.u8": (b"\x00" * 1000, "damaged store (ValueError: mmap length is greater than file size)"),
        "train.labels.npy": (b"garbage", "damaged store (ValueError"),
    }
    capsys.readouterr()
    for name, (data, says) in damage.items():
        bad = tmp_path / name
        shutil.copytree(good, bad)
        (bad / name).write_bytes(data)
        for cmd in (
            ["train", "--data", str(bad), "--out", str(tmp_path / "run"), *FAST],
            ["pca-stats", "--data", str(bad)],
        ):
            assert main(cmd) == 2, cmd
            err = capsys.readouterr().err.strip()
            assert says in err and str(bad) in err and len(err.splitlines()) == 1, err
    (good / "manifest.json").write_text('{"complete": true}')
    with pytest.raises(UserError, match="damaged store manifest \\(not a store manifest's fields\\)"):
        store_mod.open_store(good, "train")


def test_store_reads_agree_and_prefetch_keeps_order(tiny_folder: Path, tmp_path: Path) -> None:
    from alexnet.data.batches import prefetch

    out = tmp_path / "store"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "40", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    ids = torch.tensor([17, 3, 3, 0, 9])
    by_read = store_mod.StoreImages(out, "train", manifest, read="pread")[ids]
    by_map = store_mod.StoreImages(out, "train", manifest, read="mmap")[ids]
    assert torch.equal(by_read, by_map) and by_read.shape == (5, 3, 40, 40)
    assert torch.equal(by_read[1], by_read[2])

    got = list(prefetch(lambda i: (torch.tensor(i), torch.tensor(i * i), torch.tensor(0)), list(range(20)), 5, 3))
    assert [int(a) for a, _, _ in got] == list(range(20)) and [int(b) for _, b, _ in got] == [i * i for i in range(20)]

    def broken(i: int):
        if i == 4:
            raise OSError("disk went away")
        return torch.tensor(i), torch.tensor(i), torch.tensor(i)

    with pytest.raises(OSError, match="disk went away"):
        list(prefetch(broken, list(range(10)), 3, 2))
    early = prefetch(broken, list(range(3)), 3, 2)
    assert int(next(early)[0]) == 0
    early.close()  # stopping mid-epoch (a signal, an error) does not hang on the threads


def test_a_store_trained_run_works_everywhere_a_folder_does(tiny_folder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """evaluate, figures and report read the run's store; prepare logs plain lines when not on a terminal."""
    store = tmp_path / "store"
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(store), "--size", "72", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "prepare train" in err and "\r" not in err  # stderr here is not a terminal
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), "--out", str(run), *FAST, "--set", "data.normalize=channel"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 9
    other = tmp_path / "other-val"  # --split-dir: other images of the same classes (was: the store's val, silently)
    for f in sorted((tiny_folder / "val").rglob("*.png"))[::3]:
        (other / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, other / f.parent.name / f.name)
    assert main(["evaluate", str(run), "--split-dir", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(list(other.rglob("*.png"))) == 3
    assert main(["evaluate", str(run), "--split-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--split-dir" in err and "no such directory" in err
    assert main(["figures", str(run), "--out", str(tmp_path / "figs")]) == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == 5
    record = json.loads((tmp_path / "figs" / "neighbours.json").read_text())
    assert all(str(tiny_folder) in n for row in record for n in row["neighbours"])  # the store's source files
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    (store / "alexnet-stats.npz").write_bytes(b"statistics")  # as `pca-stats --data STORE` leaves them
    assert main(["prepare", "--data", str(tiny_folder), "--out", str(store), "--size", "72", "--workers", "1"]) == 0
    assert "checking the complete store" in capsys.readouterr().err  # the same command again: the store, not other
    # files, and its labels as they were
    assert store_mod.open_store(store, "train")[1].tolist() == [
        y for _, y in scan_folder(tiny_folder / "train").samples
    ]


def test_jpeg_decode_gpu_hands_the_store_batches_to_the_gpu_decoder(tiny_folder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """data.jpeg_decode=gpu: every training and validation batch of a JPEG store is decoded by the decoder
    for the training GPU (here a pretend cuda:0 whose decoder is the CPU one); a CPU run or a raw store is
    refused in one line, before the run directory exists. nvJPEG itself is untested (no GPU here)."""
    from alexnet.config import load_recipe
    from alexnet.data.loaders import build_data
    from alexnet.engine.setup import resolve_config
    from alexnet.errors import UserError

    jpeg, raw = tmp_path / "jstore", tmp_path / "store"
    for out, fmt in ((jpeg, "jpeg"), (raw, "raw")):
        assert main(["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "72", "--format", fmt,
                     "--workers", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--data", str(jpeg), "--out", str(run), *FAST, "--set", "data.jpeg_decode=gpu"]) == 2
    err = capsys.readouterr().err
    assert "data.jpeg_decode=gpu decodes on the training GPU" in err and "Traceback" not in err
    assert not run.exists()

    def config(path: Path):  # noqa: ANN202
        cfg = load_recipe("fast")
        cfg.data.path, cfg.data.crop, cfg.data.workers, cfg.data.jpeg_decode = str(path), 67, 0, "gpu"
        return resolve_config(cfg, torch.device("cpu"))

    gpu = torch.device("cuda", 0)  # a device object only: nothing runs on it
    with pytest.raises(UserError, match="decodes JPEG stores"):
        build_data(config(raw), device=gpu)
    asked, cpu_decoder = [], store_mod.jpeg_decoder
    monkeypatch.setattr(store_mod, "jpeg_decoder", lambda device="cpu": asked.append(device) or cpu_decoder())
    data = build_data(config(jpeg), device=gpu)
    assert set(asked) == {"cpu"}  # the colour statistics read their sample on the CPU
    images = store_mod.open_store(jpeg, "train")[0]
    for batches in (data.train, data.val):
        asked.clear()
        x, _, idx = next(iter(batches.epoch(0)))
        assert asked == ["cuda:0"]
        if batches is data.train:
            assert torch.equal(x, images[idx])  # the same pixels as the CPU path's


def test_a_disk_that_fills_during_prepare_says_how_to_continue(tiny_folder: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """It said only "No space left on device"; what was written is kept and the same command finishes it."""
    import errno

    from alexnet.cli import main

    out, real, calls = tmp_path / "store", store_mod._save_manifest, {"n": 0}

    def fills_after_two_saves(dst: Path, manifest: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(dst, manifest)

    args = ["prepare", "--data", str(tiny_folder), "--out", str(out), "--size", "72", "--workers", "0"]
    with monkeypatch.context() as m:
        m.setattr(store_mod, "_save_manifest", fills_after_two_saves)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress lines)
    assert err == (f"alexnet prepare: error: {out}: No space left on device; what was written is kept: free space "
                   "and run the same command again to continue")  # fmt: skip
    assert main(args) == 0 and "train 18" in capsys.readouterr().out
