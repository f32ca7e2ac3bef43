"""Crash safety and hostile input: kills, signals, corrupt checkpoints, bad files, NaN, bad output dirs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.cli import main
from alexnet.data.images import ImageError, load_rgb
from alexnet.data.transforms import random_resized_crop, resize_square
from alexnet.errors import UserError
from alexnet.io import checkpoint as ckpt_io

from .conftest import FAST

# 3 classes x 6 = 18 training images, batch 4 -> 5 steps an epoch; a checkpoint after every step
KILL_ARGS = [*FAST, "--epochs", "3", "--batch-size", "4", "--set", "optim.lr=0.002", "--set", "data.normalize=channel",
             "--set", "train.checkpoint_every=1", "--set", "train.keep_last=2"]  # fmt: skip


def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip


def _wait_for_checkpoint(run: Path, newer_than: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = sorted((run / "checkpoints").glob("step-*.pt")) if (run / "checkpoints").exists() else []
        if steps and int(steps[-1].stem.split("-")[1]) > newer_than:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _last_step(run: Path) -> int:
    return max((int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt")), default=0)


def test_sigkill_at_random_points_then_resume_is_bit_exact(tiny_folder: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    assert main(["train", "--data", str(tiny_folder), "--out", str(ref), *KILL_ARGS]) == 0
    run = tmp_path / "killed"
    rng = random.Random(1234)
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *KILL_ARGS]
    kills = 0
    while kills < 3:
        proc = _spawn(args)
        if _wait_for_checkpoint(run, _last_step(run) if (run / "checkpoints").exists() else 0, proc):
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next step, or mid-save
            proc.kill()  # SIGKILL: no handler runs
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
        else:
            proc.wait()
        args = ["train", "--resume", str(run)]
        if proc.returncode == 0:
            break
    proc = _spawn(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert kills >= 1
    assert not list((run / "checkpoints").glob(".*")), "half-written files of killed saves are cleaned up"
    a = ckpt_io.load(ref / "checkpoints" / "last.pt")["model"]
    b = ckpt_io.load(run / "checkpoints" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_and_says_how_to_resume(tiny_folder: Path, tmp_path: Path, sig: int, code: int) -> None:
    run = tmp_path / "sig"
    proc = _spawn(["train", "--data", str(tiny_folder), "--out", str(run), *KILL_ARGS, "--epochs", "50"])
    assert _wait_for_checkpoint(run, 0, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert f"alexnet train --resume {run}" in err and "Traceback" not in err
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["global_step"] >= 1
    assert main(["train", "--resume", str(run), "--epochs", str(ck["epoch"] + 1)]) == 0


def test_corrupt_last_checkpoint_falls_back(
    tiny_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "r"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *KILL_ARGS, "--epochs", "1"]) == 0
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # break the hard link, then write a truncated copy
    last.write_bytes(data[: len(data) // 3])
    ck, path = ckpt_io.load_for_resume(run)
    assert path.name.startswith("step-") and ck["global_step"] == int(path.stem.split("-")[1])
    assert "last.pt" in caplog.text and "corrupt or truncated" in caplog.text
    for f in (run / "checkpoints").glob("step-*.pt"):
        f.write_bytes(b"garbage")
    with pytest.raises(UserError, match="no readable checkpoint"):
        ckpt_io.load_for_resume(run)


def test_nan_loss_stops_with_a_clear_message(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "nan"
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *KILL_ARGS, "--set", "optim.lr=1e12"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "loss became nan/inf at step" in err and "lower learning rate" in err
    assert "Traceback" not in err
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    bad = int(err.split("loss became nan/inf at step ")[1].split()[0].strip(",;:"))
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()  # the steps before the stop are on disk: what a user opens TensorBoard to look at
    assert bad > 1 and [e.step for e in tb.Scalars("step/train_loss")] == list(range(1, bad))


def test_unwritable_output_is_detected_before_training(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--data", str(tiny_folder), "--out", str(blocker / "run"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "cannot write to run directory" in err and len(err.strip().splitlines()) == 1


def test_full_disk_on_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save itself on a disk that fills: the disk is named (torch says "unexpected pos 704 vs 598")."""
    from .conftest import fill_the_disk

    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": 1}, path)
    fill_the_disk(monkeypatch, after=100_000)
    with pytest.raises(UserError, match=f"could not write checkpoint {path}: No space left on device"):
        ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": 2, "w": torch.zeros(100_000)}, path)
    assert ckpt_io.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def _record_durability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Every fsync (the file or directory it reached, by inode), rename (the name and the inode it now names) and
    unlink, in order: what a power cut may lose is what was not fsynced, directory included, before it."""
    events: list[tuple[str, object]] = []
    fsync, replace, unlink = os.fsync, os.replace, Path.unlink

    def record_fsync(fd: int) -> None:
        fsync(fd)
        events.append(("fsync", _inode(fd)))

    def record_replace(a: str | Path, b: str | Path, **kw: object) -> None:
        replace(a, b, **kw)
        events.append(("replace", (Path(b).name, _inode(b))))

    def record_unlink(self: Path, missing_ok: bool = False) -> None:
        unlink(self, missing_ok=missing_ok)
        events.append(("unlink", self.name))

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(Path, "unlink", record_unlink)
    return events


def _inode(f: int | str | Path) -> tuple[int, int]:
    st = os.fstat(f) if isinstance(f, int) else os.stat(f)
    return st.st_dev, st.st_ino


def _durable_name(events: list[tuple[str, object]], folder: Path, name: str) -> int:
    """The index of the directory fsync that makes the last rename onto ``name`` durable; its bytes were fsynced
    before that rename."""
    renames = [i for i, (kind, what) in enumerate(events) if kind == "replace" and what[0] == name]
    assert renames, f"{name}: written in place, never fsynced and renamed onto its name"
    at = renames[-1]
    assert ("fsync", events[at][1][1]) in events[:at], f"{name}: renamed before its bytes were fsynced"
    assert ("fsync", _inode(folder)) in events[at:], f"{name}: its rename was never made durable"
    return events.index(("fsync", _inode(folder)), at)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows cannot open a directory to fsync it (nor needs to)")
def test_a_published_checkpoint_survives_a_power_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before publish returns, the step file's bytes and every name swapped onto it are on disk (a rename lives in
    its directory, which the hard-link swap never fsynced)."""
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    ckpt_io.publish({"format": ckpt_io.FORMAT, "v": 1}, ck, 1, ("last", "best"), 3)  # names to swap
    events = _record_durability(monkeypatch)
    ckpt_io.publish({"format": ckpt_io.FORMAT, "v": 2}, ck, 2, ("last", "best"), 3)
    assert ckpt_io.load(ck / "last.pt")["v"] == 2 == ckpt_io.load(ck / "best.pt")["v"]
    for name in ("step-00000002.pt", "last.pt", "best.pt"):
        _durable_name(events, ck, name)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows cannot open a directory to fsync it (nor needs to)")
def test_a_finished_store_survives_a_power_cut(tiny_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Each split's images, labels, offsets and file list are fsynced and named in a fsynced directory before its
    progress file goes, and that removal is durable before the manifest says complete: after a power cut a
    "complete" store holds every file it lists."""
    from alexnet.data import store

    out = tmp_path / "store"
    events = _record_durability(monkeypatch)
    store.prepare(str(tiny_folder), str(out), size=32, fmt="jpeg", workers=1, chunk=4, progress=False)
    _durable_name(events, out, "manifest.json")
    complete = max(i for i, (kind, what) in enumerate(events) if kind == "replace" and what[0] == "manifest.json")
    for split in ("train", "val"):
        gone = events.index(("unlink", f".{split}.progress.npz"))
        data = max(i for i, e in enumerate(events[:gone]) if e == ("fsync", _inode(out / f"{split}.jpeg")))
        assert data < events.index(("fsync", _inode(out)), data) < gone
        for name in ("labels.npy", "offsets.npy", "files.json"):
            assert _durable_name(events, out, f"{split}.{name}") < gone, name
        assert events.index(("fsync", _inode(out)), gone) < complete
    assert json.loads((out / "manifest.json").read_text())["complete"]


def _hostile_folder(root: Path) -> list[str]:
    from .conftest import make_imagefolder

    make_imagefolder(root, classes=3, per_class=5)
    d = root / "train" / "class_0"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0], "L").save(d / "grey.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgb).save(d / "exif.jpg", exif=exif)
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    (d / "fake.png").write_bytes(os.urandom(300))
    Image.fromarray(rgb).save(d / "cut.jpg", quality=95)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:700])
    return ["zero.jpg", "notes.txt", "fake.png", "cut.jpg"]


def test_hostile_training_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    bad = _hostile_folder(data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST, "--set", "data.normalize=channel"]) == 0
    err = capsys.readouterr().err  # by default a bad file is found where it is read anyway: when it is decoded
    assert "skipping 1 unreadable files" in err and "notes.txt: not an image file (extension)" in err
    assert "skipped 3 images that failed to decode" in err
    for name in bad:
        assert name in err
    checked = tmp_path / "checked"  # data.check_files: every header read before training, in parallel
    assert main(["train", "--data", str(data), "--out", str(checked), *FAST, "--set", "data.normalize=channel",
                 "--set", "data.check_files=true"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"skipping {len(bad)} unreadable files" in err and all(name in err for name in bad)
    assert "truncated (no end-of-image marker" in err  # found at the start by the end-marker check
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "strict"), *FAST, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "unreadable image files" in err and all(name in err for name in bad)
    assert not (tmp_path / "strict").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="macOS and Windows file systems store only Unicode names")
def test_file_names_that_are_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Linux names are bytes: a Latin-1 name from an old archive (b'\\xe9') is not UTF-8. Training, a store made
    of the folder, evaluation and the training set's identity (what a resume compares) take it like any other."""
    from .conftest import make_imagefolder

    data = make_imagefolder(tmp_path / "data")
    cls = os.fsencode(data / "train" / "class_0")
    os.rename(cls + b"/img_0.png", cls + b"/caf\xe9.png")
    run = tmp_path / "r\u00fcn 1"
    assert main(["train", "--data", str(data), "--out", str(run), *FAST, "--set", "data.check_files=true"]) == 0
    assert "unreadable" not in capsys.readouterr().err  # the file was read, not skipped
    store = tmp_path / "store"
    assert main(["prepare", "--data", str(data), "--out", str(store), "--size", "72", "--workers", "1"]) == 0
    assert main(["evaluate", str(run), "--data", str(store), "--json"]) == 0
    from alexnet.data.loaders import open_split  # the same set either way: a run resumes on the store

    same = open_split(str(store), "train", 72).identity()
    assert (
        ckpt_io.load(run / "checkpoints" / "last.pt")["train_set"]
        == same
        == open_split(str(data), "train", 72).identity()
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(1, 300), h=st.integers(1, 300),
       mode=st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "I", "F"]))  # fmt: skip
def test_transforms_accept_any_size_and_mode(tmp_path: Path, w: int, h: int, mode: str) -> None:
    img = Image.new(mode, (w, h))
    path = tmp_path / f"x_{w}_{h}.{'tiff' if mode in ('I', 'F', 'I;16') else 'png' if mode != 'CMYK' else 'jpg'}"
    img.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (w, h)
    out = resize_square(32)(rgb)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert random_resized_crop(24, 0.08)(rgb).shape == (3, 24, 24)


def _refused_naming(e: ImageError, path: Path) -> None:
    """What a user reads of a bad file: one line that starts with the file's name and says why."""
    said = str(e)
    assert said.startswith(f"{path}: ") and len(said) > len(f"{path}: ") and "\n" not in said, said


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2000), ext=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".webp"]))
def test_random_bytes_are_refused_naming_the_file(tmp_path: Path, data: bytes, ext: str) -> None:
    path = tmp_path / f"blob{ext}"
    path.write_bytes(data)
    try:
        rgb = load_rgb(path)
    except ImageError as e:
        _refused_naming(e, path)
    else:  # bytes that happen to be an image: then an RGB one, as any image
        assert rgb.mode == "RGB" and min(rgb.size) >= 1


IMAGE_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ext=st.sampled_from(sorted(IMAGE_FORMATS)), w=st.integers(1, 48), h=st.integers(1, 48),
       cut=st.floats(0, 1), tail=st.binary(max_size=300))  # fmt: skip
def test_a_damaged_image_is_refused_naming_the_file_or_decodes_whole(tmp_path: Path, ext: str, w: int, h: int,
                                                                    cut: float, tail: bytes) -> None:  # fmt: skip
    """A valid image of each format, followed by junk (cameras and editors append data), decodes to its own size
    and pixels; cut anywhere, it is refused naming the file, or (its pixels all there) decodes at its own size."""
    pixels = np.random.default_rng(w * 100 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / f"image{ext}"
    Image.fromarray(pixels).save(path, IMAGE_FORMATS[ext])
    good = path.read_bytes()
    want = np.asarray(load_rgb(path))
    assert want.shape == (h, w, 3) and (ext not in (".png", ".bmp") or np.array_equal(want, pixels))  # lossless
    path.write_bytes(good + tail)
    assert np.array_equal(np.asarray(load_rgb(path)), want)
    path.write_bytes(good[: int(len(good) * cut)])
    try:
        rgb = load_rgb(path)
    except ImageError as e:
        _refused_naming(e, path)
    else:
        assert rgb.mode == "RGB" and rgb.size == (w, h)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"]),
       tail=st.binary(min_size=0, max_size=500))  # fmt: skip
def test_corrupt_headers_are_refused_naming_the_file(tmp_path: Path, prefix: bytes, tail: bytes) -> None:
    path = tmp_path / "blob.img"
    path.write_bytes(prefix + tail)
    try:
        rgb = load_rgb(path)
    except ImageError as e:
        _refused_naming(e, path)
    else:
        assert rgb.mode == "RGB" and min(rgb.size) >= 1
