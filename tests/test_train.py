"""Training end to end on tiny data: the run directory, resume, overrides, schedules, optimisers."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alexnet.cli import main
from alexnet.config import Config, ScheduleConfig, apply_overrides, load_recipe
from alexnet.engine.optim import PaperSGD, Schedule
from alexnet.errors import UserError
from alexnet.io import checkpoint as ckpt_io

from .conftest import FAST

EPOCH_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "images_per_sec",
    "seconds",
}


def test_one_epoch_writes_the_run_directory(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST, "--set", "optim.lr=0.003"]) == 0
    assert (run / "config.yaml").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["path"] == str(tiny_folder) and cfg["optim"]["lr"] == 0.003
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and EPOCH_KEYS <= set(rows[0])
    assert rows[0]["val_n"] == 9
    for name in ("last.pt", "best.pt"):
        ck = ckpt_io.load(run / "checkpoints" / name)
        assert ck["class_names"] == ["class_0", "class_1", "class_2"]
        assert ck["variant"] == "alexnet" and ck["epoch"] == 1
        assert ck["config"]["optim"]["lr"] == 0.003
        assert {"torch"} <= set(ck["rng"]) and "optimizer" in ck and "schedule" in ck
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    err = capsys.readouterr().err
    assert "best val top-1" in err and str(run) in err


def test_a_folder_of_other_files_is_not_trained_into(tiny_folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--out naming a folder of the user's own files, even ones named as a run's are, is refused, the files as they
    were; --resume of a folder that is not a run leaves nothing in it."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "config.yaml").write_text("my notes\n")
    (mine / "stats.npz").write_bytes(b"mine")
    assert main(["train", "--data", str(tiny_folder), "--out", str(mine), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files that are not a run's (config.yaml, stats.npz)" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "stats.npz"]
    assert (mine / "config.yaml").read_text() == "my notes\n" and (mine / "stats.npz").read_bytes() == b"mine"
    assert main(["train", "--resume", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "stats.npz"]


def test_existing_run_is_not_overwritten(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Nor is its network changed by a resume: --model, LRN constants, init, --weights, freeze_features or another
    --recipe once crashed (a state_dict or optimizer-group mismatch), or were silently ignored or applied to weights
    trained without them. The run's own values are fine (a requeue script repeats its command)."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes(), (run / "config.yaml").read_text()
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err
    for change in (["--model", "alexnet_bn"], ["--set", "model.lrn_k=1"], ["--set", "model.init=default"],
                   ["--set", "model.freeze_features=true"], ["--weights", str(run)], ["--recipe", "fast"]):  # fmt: skip
        assert main(["train", "--resume", str(run), "--epochs", "2", *change]) == 2, change
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a resumed run keeps" in err, err
    assert ((run / "checkpoints" / "last.pt").read_bytes(), (run / "config.yaml").read_text()) == before
    assert main(["train", "--resume", str(run), "--model", "alexnet", "--recipe", "paper", "--epochs", "2",
                 "--set", "model.dropout=0.1"]) == 0  # fmt: skip
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="the test holds the lock with fcntl; Windows runs take msvcrt's")
def test_one_process_at_a_time_writes_a_run(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A second terminal's --resume, or the same --out twice, while a run trains: refused, nothing touched."""
    import fcntl

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with open(run / ".lock", "a+b") as held:  # as the training process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stale = run / "checkpoints" / ".last.pt.tmp-999"  # that process's save in progress
        stale.write_bytes(b"half")
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        assert f"another process is training into {run}" in capsys.readouterr().err
        assert stale.read_bytes() == b"half" and (run / "checkpoints" / "last.pt").read_bytes() == before
    # a resume holds the lock from before it reads the checkpoint: a process that would train the run meanwhile
    # (a requeued job, a second terminal) is kept out, so what it reads is not replaced under it
    real_load, kept_out = ckpt_io.load_for_resume, []

    def another_process_tries_meanwhile(path: Path) -> tuple:
        with open(run / ".lock", "a+b") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                kept_out.append(False)
            except BlockingIOError:
                kept_out.append(True)
        return real_load(path)

    monkeypatch.setattr(ckpt_io, "load_for_resume", another_process_tries_meanwhile)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert kept_out == [True]
    # a run that finished in the same directory while this one scanned its data: found again under the lock
    from alexnet.engine import setup as setup_mod

    real = setup_mod.build_data

    def another_run_finishes_meanwhile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        (tmp_path / "late" / "metrics.jsonl").write_text('{"epoch": 1}\n')
        return real(*args, **kwargs)

    (tmp_path / "late").mkdir()
    monkeypatch.setattr(setup_mod, "build_data", another_run_finishes_meanwhile)
    assert main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "late"), *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "late" / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_windows_run_lock(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Windows has no fcntl: the lock is msvcrt.locking, whose non-blocking form raises OSError(EACCES) on a
    locked byte. Emulated here as Windows behaves, on top of flock."""
    import errno
    import fcntl
    import types

    from alexnet.io import locks

    def locking(fd: int, mode: int, n: int) -> None:
        assert mode == 2 and n == 1  # LK_NBLCK, one byte
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EACCES, "Permission denied") from None

    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "msvcrt", types.SimpleNamespace(LK_NBLCK=2, locking=locking), raising=False)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+b") as held:
        locking(held.fileno(), 2, 1)
        assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 2
        assert f"another process is training into {run}" in capsys.readouterr().err
    locks.lock_dir(run, "training into")  # free again: taken, as a run takes it
    assert run.absolute() in locks._HELD
    locks.unlock_dir(run)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(path)["model"]


def test_resume_mid_run_equals_uninterrupted(tiny_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    flags = "--epochs 2 --batch-size 4 --set optim.lr=0.002 --set train.checkpoint_every=2 --set train.keep_last=2"
    common = ["--data", str(tiny_folder), *FAST, *flags.split(), "--set", "data.pca_noise=0.1"]
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *common]) == 0  # 5 steps an epoch, 10 in all
    # Pretend the run died after step 8 (mid-epoch 2): resume from that checkpoint in a copy.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for f in (cut / "checkpoints").glob("*.pt"):
        if f.name != "step-00000008.pt":
            f.unlink()
    (cut / "metrics.jsonl").write_text("\n".join((full / "metrics.jsonl").read_text().splitlines()[:1]) + "\n")
    ck = ckpt_io.load(cut / "checkpoints" / "step-00000008.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 3)
    moved = shutil.copytree(tiny_folder, tmp_path / "moved")  # the same images elsewhere: the same run
    assert main(["train", "--resume", str(cut), "--data", str(moved)]) == 0
    assert "training images differ" not in caplog.text
    a, b = _weights(full / "checkpoints" / "last.pt"), _weights(cut / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (full / "metrics.jsonl").read_text().count("\n") == (cut / "metrics.jsonl").read_text().count("\n")
    last_full = json.loads((full / "metrics.jsonl").read_text().splitlines()[-1])
    last_cut = json.loads((cut / "metrics.jsonl").read_text().splitlines()[-1])
    assert last_full["val_top1"] == last_cut["val_top1"] and last_full["train_loss"] == pytest.approx(
        last_cut["train_loss"]
    )
    before, config = (cut / "checkpoints" / "last.pt").read_bytes(), (cut / "config.yaml").read_text()
    assert main(["train", "--resume", str(cut)]) == 0  # a finished run: said so, and nothing changes
    assert "nothing left to train: the run finished at epoch 2, step 10" in caplog.text
    assert main(["train", "--resume", str(cut), "--epochs", "1"]) == 0  # config.yaml once said 1 epoch after this
    assert (cut / "checkpoints" / "last.pt").read_bytes() == before and (cut / "config.yaml").read_text() == config
    shutil.copy(moved / "train" / "class_0" / "img_0.png", moved / "train" / "class_1" / "new.png")
    assert main(["train", "--resume", str(cut), "--epochs", "3"]) == 0  # goes on, saying the run is no longer exact
    assert "training images differ from the checkpoint's (18 images, sha256 " in caplog.text
    assert "; now 19 images, sha256 " in caplog.text
    (moved / "train" / "class_9").mkdir()
    shutil.copy(moved / "train" / "class_0" / "img_0.png", moved / "train" / "class_9")
    before = (cut / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(cut), "--epochs", "4"]) == 2  # another class: another network's head
    assert "the data's classes differ from the checkpoint's" in capsys.readouterr().err
    assert (cut / "checkpoints" / "last.pt").read_bytes() == before


def test_overrides_reach_the_config_and_unknown_keys_fail(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    cfg = apply_overrides(load_recipe("paper"), ["optim.lr=0.05", "train.amp=bf16", "data.mean=[0.1,0.2,0.3]"])
    assert cfg.optim.lr == 0.05 and cfg.train.amp == "bf16" and cfg.data.mean == [0.1, 0.2, 0.3]
    assert apply_overrides(load_recipe("paper"), ["model.lrn_k=0", "model.lrn_beta=0"]).model.lrn_k == 0  # x / 1
    cases = {
        "optim.lrr=0.1": "unknown config key 'optim.lrr'",
        "foo.bar=1": "no section 'foo'",
        "optim.lr=abc": "optim.lr must be a number",
        "optim.lr=[": "optim.lr must be a number, got '['",  # not YAML: was a ParserError as an unexpected failure
        "data.mean=[1,2": "data.mean must be a list, got '[1,2'",
        "optim.lr=0": "optim.lr must be > 0",
        "optim.lr=.inf": "optim.lr must be a finite number, got inf",  # was taken: the loss became nan
        "train.epochs=.inf": "train.epochs must be a finite number, got inf",  # was an OverflowError
        "train.batch_size=0": "train.batch_size must be > 0",
        "train.amp=fp8": "train.amp: 'fp8' is not allowed",
        "data.workers=-5": "data.workers must be >= -1, got -5",  # -1 is one per core; others were taken as it
        # a seed past 2**32 once overflowed the data order's generator after the run directory existed
        "train.seed=1000000000000000": "train.seed must be between 0 and 4294967295, got 1000000000000000",
        "train.seed=-1": "train.seed must be between 0 and 4294967295, got -1",
        "data.crop=300": "data.crop (300) cannot be larger than data.resize (256)",
        "model.name=vgg": "unknown model 'vgg'",
        # NaN on every all-zero window (common after ReLU): (0 + alpha/n * 0)^-beta; with beta 0 it is 1
        "model.lrn_k=0": "model.lrn_k must be > 0 when model.lrn_beta is not 0, got lrn_k=0 with lrn_beta=0.75",
    }
    for override, message in cases.items():
        with pytest.raises(UserError, match=re.escape(message)):
            apply_overrides(load_recipe("paper"), [override])
        out = tmp_path / "never"
        assert main(["train", "--out", str(out), "--set", override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and message.split(" (")[0] in err
        assert not out.exists()
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("text, says", [
    ("model: [\n", "not valid YAML"),
    ("- model\n- data\n", "expected a mapping of sections, got list"),  # was an AttributeError
    ("model: alexnet\n", "section 'model' must be a mapping"),
    ("modell:\n  name: alexnet\n", "unknown section 'modell'"),
    (None, "recipe file not found"),
    (b"\xff\xfe\x00\x01", "not valid YAML"),  # not text: was "'utf-8' codec can't decode", without the file
    ("optim:\n  lr: 0.01\n  lr: 0.1\n", "'lr' given twice, at line 3"),  # YAML itself keeps the last
    ("", "empty"), ("# all commented out\n", "empty"),  # they trained on the defaults
])  # fmt: skip
def test_a_recipe_file_that_is_not_a_recipe_is_one_line(text: str | bytes | None, says: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    recipe, out = tmp_path / "mine.yaml", tmp_path / "run"
    if text is not None:
        recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["train", "--recipe", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and str(recipe) in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("name", ["paper", "torchvision", "fast", "digits"])
def test_recipes_load(name: str) -> None:
    cfg = load_recipe(name)
    assert isinstance(cfg, Config) and cfg.recipe == name


def test_paper_recipe_values() -> None:
    cfg = load_recipe("paper")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.train.batch_size) == (0.01, 0.9, 5e-4, 128)
    assert (cfg.schedule.name, cfg.schedule.factor, cfg.schedule.max_drops, cfg.train.epochs) == ("plateau", 0.1, 3, 90)
    assert (cfg.model.init, cfg.data.crop, cfg.data.pca_noise) == ("paper", 227, 0.1)


def test_plateau_schedule_drops_exactly_as_configured() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = Schedule(opt, ScheduleConfig(name="plateau", factor=0.1, patience=1, max_drops=3), 0.01, 100, 10)
    # val accuracy: improves, then stalls; patience=1 means the 2nd epoch without improvement drops
    accs = [0.1, 0.2, 0.2, 0.2, 0.3, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    lrs = []
    for a in accs:
        sched.after_epoch(a)
        lrs.append(opt.param_groups[0]["lr"])
    expected = [0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]
    assert lrs == pytest.approx(expected)
    assert sched.drops == 3  # never a 4th drop


def test_step_and_onecycle_schedules() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = Schedule(opt, ScheduleConfig(name="step", step_size=2, factor=0.5), 1.0, 6, 1)
    lrs = []
    for _ in range(6):
        s.after_epoch(None)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    s = Schedule(opt, ScheduleConfig(name="onecycle", warmup_epochs=1), 1.0, 4, 10)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(40):
        s.after_step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(0.1) and max(seen) == pytest.approx(1.0) and seen[10] == pytest.approx(1.0)
    assert seen[-1] == pytest.approx(0.0)


def _run_rules(drop_at: int | None, steps: int = 8) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    target = torch.randn(5)
    w_paper = torch.nn.Parameter(torch.randn(5))
    w_torch = torch.nn.Parameter(w_paper.detach().clone())
    paper = PaperSGD([w_paper], lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref = torch.optim.SGD([w_torch], lr=0.1, momentum=0.9, weight_decay=5e-4)
    out_p, out_t = [], []
    for i in range(steps):
        if drop_at is not None and i == drop_at:
            for o in (paper, ref):
                o.param_groups[0]["lr"] = 0.01
        for w, o in ((w_paper, paper), (w_torch, ref)):
            o.zero_grad()
            ((w - target) ** 2).sum().backward()
            o.step()
        out_p.append(w_paper.detach().clone())
        out_t.append(w_torch.detach().clone())
    return out_p, out_t


def test_paper_update_rule_equals_sgd_at_constant_lr_and_differs_after_a_drop() -> None:
    p, t = _run_rules(drop_at=None)
    for a, b in zip(p, t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    p, t = _run_rules(drop_at=4)
    for a, b in zip(p[:4], t[:4]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # right after the drop: the paper's velocity still carries the old lr
    assert (p[4] - t[4]).abs().max() > 1e-3


def test_auto_compute_path_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.engine import tuning

    cfg = apply_overrides(load_recipe("fast"), ["train.compile=auto"])
    assert (cfg.train.amp, cfg.train.channels_last, cfg.train.compile) == ("auto", None, None)
    cpu = torch.device("cpu")
    monkeypatch.setattr(tuning, "native_bf16", lambda d: True)
    assert (tuning.resolve(cfg.train, cpu).amp, tuning.resolve(cfg.train, cpu).channels_last) == ("bf16", True)
    monkeypatch.setattr(tuning, "native_bf16", lambda d: False)
    assert tuning.resolve(cfg.train, cpu).amp == "none"  # emulated bf16 is slower than fp32
    explicit = apply_overrides(load_recipe("fast"), ["train.amp=bf16", "train.channels_last=false"]).train
    assert (tuning.resolve(explicit, cpu).amp, tuning.resolve(explicit, cpu).channels_last) == ("bf16", False)
    cuda = torch.device("cuda", 0)
    assert not tuning.compile_pays(cpu, True, 10**9)
    monkeypatch.setattr(tuning, "triton_runs", lambda device: True)  # an Ampere GPU with Triton
    assert tuning.compile_pays(cuda, True, 2_000_000) and not tuning.compile_pays(cuda, False, 2_000_000)
    assert tuning.compile_pays(cuda, False, 90 * 1_281_167) and not tuning.compile_pays(cuda, True, 10**9, towers=True)


def test_runs_started_in_the_same_second_never_share_a_directory(tiny_folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Without --out a run is named by the second it starts: a job array starting several at once must not train
    them into one directory (each passed the "already holds a run" check before any wrote a checkpoint)."""
    import importlib
    from datetime import datetime

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None) -> datetime:  # noqa: ANN001
            return datetime(2026, 11, 29, 12, 0, 0)

    monkeypatch.setattr(importlib.import_module("alexnet.commands.train"), "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "runs" / "paper-alexnet-20261129-120000"
    taken.mkdir(parents=True)  # made a moment ago by a run still starting: nothing in it yet
    assert main(["train", "--data", str(tiny_folder), *FAST]) == 0
    assert not any(taken.iterdir())
    assert (tmp_path / "runs" / f"{taken.name}-2" / "checkpoints" / "last.pt").is_file()
    assert main(["train", "--data", str(tmp_path / "missing"), *FAST]) == 2  # a failed start leaves no directory
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [taken.name, f"{taken.name}-2"]


def test_batchnorm_statistics_recalibrated_at_the_test_view(tiny_folder: Path, tmp_path: Path) -> None:
    """train.bn_recalibrate: before the last validation, BatchNorm's statistics are recomputed with the final
    weights over training images in the validation's view (here 99 px centre crops, after training at 67 px):
    the same weights as a run without it, statistics that describe that view, and the validation of the saved
    network (what `evaluate` reports)."""
    from alexnet.data.loaders import build_eval_data
    from alexnet.data.transforms import tta_center
    from alexnet.inference import evaluate
    from alexnet.io.weights import load_weights

    common = ["--data", str(tiny_folder), *FAST, "--model", "alexnet_bn", "--epochs", "2", "--batch-size", "18",
              "--set", "data.resize=104", "--set", "data.crop=99", "--set", "data.res_start=67", "--set",
              "data.res_end=67", "--set", "model.init=kaiming", "--set", "optim.lr=0.002"]  # fmt: skip
    runs = {n: tmp_path / f"recal-{n}" for n in (0, 18)}  # 18: every training image, one batch
    for n, run in runs.items():
        assert main(["train", "--out", str(run), *common, "--set", f"train.bn_recalibrate={n}"]) == 0
    plain, recal = (ckpt_io.load(runs[n] / "checkpoints" / "last.pt")["model"] for n in (0, 18))
    assert all(torch.equal(plain[k], recal[k]) for k in plain if "running" not in k and "num_batches" not in k)
    w = load_weights(str(runs[18] / "checkpoints" / "last.pt"))
    train = build_eval_data(None, w.preprocess, w.class_names, 18, 0, split_dir=str(tiny_folder / "train"))
    ((x, _, _),) = list(train.epoch(0))  # the 18 training images, as validation crops them
    with torch.no_grad():
        out = w.model.features.conv1(tta_center(w.preprocess.normalizer()(x), 99)[0])
    var = out.transpose(0, 1).flatten(1).var(1)  # what BatchNorm keeps: the unbiased variance per channel
    torch.testing.assert_close(recal["features.bn1.running_var"], var, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain["features.bn1.running_var"], var, rtol=0.05)
    row = [json.loads(line) for line in (runs[18] / "metrics.jsonl").read_text().splitlines()][-1]
    val = build_eval_data(str(tiny_folder), w.preprocess, w.class_names, 6, 0)
    res = evaluate(w.model, val, w.preprocess.normalizer(), 99, 3, torch.device("cpu"), row["val_tta"])
    assert (row["val_top1"], row["val_loss"]) == pytest.approx((res.top1, res.loss))
