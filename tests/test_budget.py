"""Progressive resizing (data/resolution.py) and `train --budget` (engine/budget.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from alexnet import checkpoint as ckpt_io
from alexnet.cli import main
from alexnet.config import Config, ScheduleConfig, apply_overrides, load_recipe, parse_duration
from alexnet.data.folder import FolderDataset, scan_folder
from alexnet.data.resolution import allowed_sizes, epoch_sizes, rising
from alexnet.data.transforms import BatchAugment, Normalizer, random_resized_crop
from alexnet.engine import budget
from alexnet.engine.budget import Costs, Plan, best_steps, command_age, cost
from alexnet.engine.ema import Ema, decay_for
from alexnet.errors import UserError
from alexnet.optim import Schedule
from alexnet.plots import curves_figure
from alexnet.weights import load_weights

from .conftest import FAST


def test_durations_and_their_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "2h", "1h30m", "1.5h", "2m 30s")] == [90, 900, 7200, 5400,
                                                                                           5400, 150]  # fmt: skip
    for bad in ("15", "15x", "m", "0s", "fast"):
        with pytest.raises(UserError, match="duration|longer than zero"):
            parse_duration(bad)
    run = tmp_path / "run"
    assert main(["train", "--budget", "15 minutes", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.budget" in err and "not a duration" in err
    assert not run.exists()
    assert main(["train", "--budget", "1m", "--set", "train.max_steps=5", "--out", str(run)]) == 2
    assert "one or the other" in capsys.readouterr().err and not run.exists()
    assert main(["train", "--set", "train.eval_every=2", "--set", "schedule.name=plateau", "--out", str(run)]) == 2
    assert "needs train.eval_every=1" in capsys.readouterr().err and not run.exists()


def test_resolution_schedule_steps_by_the_network_stride() -> None:
    assert allowed_sizes(227, 131) == [131, 163, 195, 227]
    assert allowed_sizes(224, 128) == [128, 160, 192, 224]
    assert allowed_sizes(227, 128) == [131, 163, 195, 227]  # off the grid: the next size up, never below the start
    assert allowed_sizes(227, 132) == [163, 195, 227] and allowed_sizes(227, 300) == [227]
    sizes = epoch_sizes(227, 131, [0.35, 0.85], steps_per_epoch=10, total_steps=160)
    assert len(sizes) == 16 and sizes[0] == 131 and sizes[-1] == 227
    assert sizes == sorted(sizes) and all((227 - s) % 32 == 0 for s in sizes)
    assert sizes[:5] == [131] * 5 and sizes[-2:] == [227, 227]  # before the ramp / after it
    assert len(epoch_sizes(227, 131, [0.35, 0.85], 10, 25)) == 3  # a partial last epoch has its own size
    assert epoch_sizes(227, None, [0.35, 0.85], 10, 30) == [227] * 3  # off


def test_a_smaller_epoch_sees_the_same_view_at_lower_resolution() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    key = torch.arange(4, dtype=torch.int64) * 7919
    aug = BatchAugment("paper", 40, Normalizer(torch.zeros(3), torch.ones(3)), 0.0)
    full, small = aug(x, key), aug(x, key, size=24)
    assert small.shape == (4, 3, 24, 24)
    # the same crop window and mirror, resampled: up to the uint8 rounding of the small batch
    expected = F.interpolate(full, size=(24, 24), mode="bilinear", antialias=True)
    assert (small - expected).abs().max() <= 1 / 255 + 1e-6
    modern = BatchAugment("modern", 40, Normalizer(torch.zeros(3), torch.ones(3)), 0.0, 0.3)
    assert modern(x, key, size=24).shape == (4, 3, 24, 24)
    # a store's images are cropped on the batch even when they are already the crop's size
    same = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    assert not torch.equal(modern(same, key), Normalizer(torch.zeros(3), torch.ones(3))(same))


def test_folder_workers_crop_at_the_epoch_size(tiny_folder: Path) -> None:
    from functools import partial

    index = scan_folder(tiny_folder / "train")
    make = partial(random_resized_crop, min_scale=0.5)
    ds = FolderDataset(index, make(64), 64, seed=0, random=True, make_transform=make)
    assert ds[0][0].shape == (3, 64, 64)
    ds.set_size(32)
    assert ds[0][0].shape == (3, 32, 32)


def test_the_budget_counts_from_the_command_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import time

    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest"])
    assert command_age() == 0.0  # called from Python (a test, a notebook): counted from the call
    if Path("/proc/self/stat").is_file():  # Linux: the `alexnet` process's own age, imports included
        for argv0 in ("/venv/bin/alexnet", "/site-packages/alexnet/__main__.py"):
            monkeypatch.setattr(sys, "argv", [argv0])
            assert 0 < command_age() <= time.monotonic()


def _config(res_start: int | None, every: int = 0) -> Config:
    cfg = load_recipe("fast")
    cfg.data.crop, cfg.data.res_start, cfg.train.checkpoint_every, cfg.train.eval_every = 227, res_start, every, 1
    cfg.data.res_end = None  # the ramp ends at the crop
    return cfg


def test_the_plan_is_the_longest_run_that_fits() -> None:
    # step cost a + b * side^2 through two probed sizes (the shape measured on this repo's CPU)
    costs = Costs({131: 2.0, 227: 6.4}, warm_s=3.0, epoch_s=1.0, val_s=40.0, save_s=2.0)
    assert costs.step(163) == pytest.approx(2.0 + 4.4 * (163**2 - 131**2) / (227**2 - 131**2))
    s = _config(131)
    n = best_steps(900.0, 74, s, costs)
    assert cost(n, 74, s, costs) <= 900 * 0.98 < cost(n + 1, 74, s, costs)
    fixed = _config(None)
    assert best_steps(900.0, 74, fixed, costs) < n  # progressive buys more steps
    # every epoch pays its validation and checkpoint, mid-epoch checkpoints are counted too
    assert cost(74, 74, fixed, costs) == pytest.approx(74 * 6.4 + 1.0 + 40.0 + 2.0)
    assert cost(74, 74, _config(None, every=10), costs) == pytest.approx(74 * 6.4 + 43.0 + 7 * 2.0)
    assert best_steps(30.0, 74, fixed, costs) == 0  # not even one validation fits
    last_only = _config(None)
    last_only.train.eval_every = 0  # one validation, after the last epoch
    assert cost(222, 74, last_only, costs) == pytest.approx(cost(222, 74, fixed, costs) - 2 * 40.0)
    # the rest of a run from step 100 (mid-epoch 2, whose end is to come) and from 148 (epoch 2's end done)
    assert cost(222, 74, fixed, costs, done=100) == pytest.approx(122 * 6.4 + 1.0 + 2 * 2.0 + 2 * 40.0)
    assert cost(222, 74, fixed, costs, done=148) == pytest.approx(74 * 6.4 + 1.0 + 2.0 + 40.0)
    assert cost(222, 74, s, costs, done=100, current=131) < cost(222, 74, s, costs, done=100)  # the crop in progress
    assert best_steps(0.0, 74, fixed, costs, done=148) == 149  # out of time: one more step, a validated end
    assert best_steps(0.0, 74, fixed, costs, done=148, validated_end=True) == 148  # epoch 2 was validated: end
    assert best_steps(500.0, 74, fixed, costs, done=148, validated_end=True) > 148  # time left: go on
    # after an epoch at 227 px, the rest of a progressive run costs what the fixed run's does: crops never step
    # down (a check that lengthened the run would otherwise plan 131 px again), and 227 needs no new warm-up
    assert cost(740, 74, s, costs, done=148, current=227) == pytest.approx(cost(740, 74, fixed, costs, done=148))
    # train.bn_recalibrate: its pass comes once, at the last epoch's end, whenever that is still to come
    recal = replace(costs, recal_s=15.0)
    assert cost(222, 74, fixed, recal) == pytest.approx(cost(222, 74, fixed, costs) + 15.0)
    assert cost(222, 74, fixed, recal, done=100) == pytest.approx(cost(222, 74, fixed, costs, done=100) + 15.0)
    assert cost(222, 74, fixed, recal, done=222) == cost(222, 74, fixed, costs, done=222) == 0.0
    assert rising([131, 163, 131, 131, 227], floor=163) == [163, 163, 163, 163, 227]


def test_more_timed_crops_make_a_least_squares_fit() -> None:
    exact = Costs({131: 2.0, 163: 2.0 + 0.0002 * (163**2 - 131**2), 227: 2.0 + 0.0002 * (227**2 - 131**2)}, 0, 0, 0, 0)
    assert exact.step(195) == pytest.approx(2.0 + 0.0002 * (195**2 - 131**2))
    noisy = Costs({131: 2.0, 163: 3.0, 227: 6.0}, 0, 0, 0, 0)
    b, a = np.polyfit([131**2, 163**2, 227**2], [2.0, 3.0, 6.0], 1)
    assert noisy.step(195) == pytest.approx(a + b * 195**2) and Costs({99: 1.5}, 0, 0, 0, 0).step(67) == 1.5
    # weighted by the steps each time is from: a check's 40 steps at 163 px outweigh the probe's 3 per crop
    checked = Costs(noisy.step_s, 0, 0, 0, 0, timed={131: 3, 163: 40, 227: 3})
    b, a = np.polyfit([131**2, 163**2, 227**2], [2.0, 3.0, 6.0], 1, w=np.sqrt([3, 40, 3]))
    assert checked.step(195) == pytest.approx(a + b * 195**2) and abs(checked.step(163) - 3.0) < abs(
        noisy.step(163) - 3.0
    )


def _lrs(cfg: ScheduleConfig, total: int, steps: int, retarget: tuple[int, int] | None = None) -> list[float]:
    sched = Schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), cfg, 1.0, 1, 10, total)
    lrs = [sched.lr]
    for _ in range(steps):
        sched.after_step()
        if retarget and sched.step_count == retarget[0]:
            sched.retarget(retarget[1])
        lrs.append(sched.lr)
    return lrs


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_a_retargeted_schedule_goes_on_from_where_it_is(name: str) -> None:
    plain = _lrs(ScheduleConfig(name=name, warmup_epochs=0.5), 40, 40)
    cfg = ScheduleConfig(name=name, warmup_epochs=0.5)
    longer = _lrs(cfg, 40, 60, retarget=(20, 60))
    assert longer[:21] == plain[:21] and cfg.retargets == [[0, 40], [20, 60]]
    steps = [b - a for a, b in zip(longer[20:], longer[21:])]
    assert all(d < 0 for d in steps[:-1]) and abs(steps[0]) < abs(plain[21] - plain[20])  # on, more slowly
    assert longer[60] == pytest.approx(0.0) and longer[59] > 0  # the decay ends at the new length
    # the config (which checkpoints carry) replays it, from any step
    assert _lrs(ScheduleConfig(name=name, warmup_epochs=0.5, retargets=cfg.retargets), 60, 60) == pytest.approx(longer)
    inside = ScheduleConfig(name=name, warmup_epochs=0.5)
    assert _lrs(inside, 40, 60, retarget=(3, 60)) == pytest.approx(
        _lrs(ScheduleConfig(name=name, warmup_epochs=0.5), 60, 60)
    )


def test_checks_come_at_shares_of_the_plan_early_at_a_new_crop_and_not_at_an_epoch_end() -> None:
    plan = Plan(900, 40, 400, 3, 0.5, [131, 163, 227], 880, Costs({131: 1.0}, 0, 0, 0, 0))
    steps = [0]
    while (k := budget.next_check(plan, 148, steps[-1])) is not None:
        steps.append(k)
    # the shares 100, 200, 300, and 8 steps into the epoch at 163 px (from 148); the one at 227 px (from 296)
    # would be 304, too close to 300's
    assert steps[1:] == [100, 156, 200, 300]
    assert budget.next_check(plan, 148, 296) == 304  # checked at the epoch's end (296), not at 300
    assert budget.next_check(plan, 100, 0) == 108  # 100, 200 and 300 are epochs' ends; 108 and 208 new crops
    same_crop = Plan(900, 40, 400, 3, 0.5, [131, 131, 163], 880, plan.costs)
    assert budget.next_check(same_crop, 100, 0) == 208  # 108: 131 px was trained before
    assert budget.next_check(same_crop, 7, 0) == 100  # epochs shorter than 8 steps: no check at a new crop
    assert budget.next_check(Plan(900, 40, 20, 1, 0.5, [99], 880, plan.costs), 148, 0) == 10  # 5 is too soon


def _small_run(data: Path) -> list[str]:
    return ["--data", str(data), *FAST, "--batch-size", "4", "--set", "data.resize=104", "--set", "data.crop=99",
            "--set", "data.res_start=67", "--set", "optim.lr=0.002", "--set", "train.log_every=0"]  # fmt: skip


def test_the_ramp_can_end_below_the_test_crop(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _config(131)
    cfg.data.res_end = 163  # train 131 -> 163 px, test at 227
    assert budget.planned_sizes(cfg, 74, 740)[0] == 131 and max(budget.planned_sizes(cfg, 74, 740)) == 163
    assert budget.planned_sizes(_config(131), 74, 740)[-1] == 227
    run = tmp_path / "run"
    assert (
        main(["train", "--out", str(run), *_small_run(tiny_folder), "--epochs", "2", "--set", "data.res_end=67"]) == 0
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_size"] for r in rows] == [67, 67] and rows[-1]["val_n"] == 9
    cfg.data.res_end = 224  # between two sizes of the ladder: the next one down (as --set data.crop=224 gives)
    assert max(budget.planned_sizes(cfg, 74, 740)) == 195 and cfg.data.train_end == 195
    cfg.data.res_end = 300  # above the crop: the crop
    assert cfg.data.train_end == 227
    small = apply_overrides(load_recipe("fast"), ["data.crop=67", "data.resize=72"]).data  # res_start 131, res_end 163
    assert small.train_end == 67 and budget.planned_sizes(Config(data=small), 5, 20) == [67] * 4  # no ramp: 67
    assert main(["train", "--out", str(tmp_path / "bad"), *_small_run(tiny_folder), "--set", "data.res_start=99",
                 "--set", "data.res_end=98"]) == 2  # fmt: skip
    assert "data.res_end 98 ends the training crops at 67 px (data.crop 99 less multiples of 32), below " \
           "data.res_start (99 px)" in capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_a_check_that_finds_no_time_left_ends_the_run_at_its_validated_epoch(tiny_folder: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import alexnet.train as train_mod

    real_plan_run = train_mod.plan_run

    def late_plan_run(s: object, st: object, started: float) -> budget.BudgetRun:  # 100 s more have gone by
        return replace(real_plan_run(s, st, started), started=started - 100.0)

    monkeypatch.setattr(train_mod, "plan_run", late_plan_run)
    run = tmp_path / "late"
    assert main(["train", "--out", str(run), *_small_run(tiny_folder), "--epochs", "4", "--budget", "30s"]) == 0
    plan = json.loads((run / "plan.json").read_text())
    # the check after epoch 1 (validated) ends the run there: not one more step and a validation past the budget
    assert plan["checks"][-1]["step"] == plan["checks"][-1]["steps"] == plan["max_steps"] == 5
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["global_step"] == 5 and ck["config"]["train"]["max_steps"] == 5  # the checkpoint says the run ended
    assert main(["train", "--resume", str(run)]) == 0  # so resuming it trains nothing more
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["global_step"] == 5
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_max_steps_ends_mid_epoch_with_progressive_crops_and_resumes_exactly(tiny_folder: Path, tmp_path: Path) -> None:
    common = [*_small_run(tiny_folder), "--epochs", "3", "--set", "train.max_steps=7", "--set",
              "train.checkpoint_every=2", "--set", "schedule.name=onecycle", "--set", "train.eval_every=0",
              "--set", "train.ema=0.3"]  # fmt: skip
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *common]) == 0  # 18 images / 4: 5 steps an epoch; 7 = 5 + 2
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r["train_size"] for r in rows] == [67, 99]
    assert "val_top1" not in rows[0] and rows[1]["val_n"] == 9  # eval_every=0: the last epoch only
    (tmp_path / "figs").mkdir()
    assert curves_figure(full, tmp_path / "figs").is_file()  # draws runs with unvalidated epochs
    ck = ckpt_io.load(full / "checkpoints" / "last.pt")
    assert ck["global_step"] == 7 and ck["schedule"]["lr"] == 0.0  # the one-cycle schedule ends at max_steps
    cut = tmp_path / "cut"  # pretend it died after step 6 (mid-epoch 2)
    shutil.copytree(full, cut)
    for f in (cut / "checkpoints").glob("*.pt"):
        if f.name != "step-00000006.pt":
            f.unlink()
    (cut / "metrics.jsonl").write_text((full / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["train", "--resume", str(cut)]) == 0
    a, b = ckpt_io.load(full / "checkpoints" / "last.pt"), ckpt_io.load(cut / "checkpoints" / "last.pt")
    for key in ("model", "ema"):  # the weights and their average (train.ema) both resume exactly
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])
    # the run's result is the average: it was validated, and evaluate/predict/export load it
    loaded = load_weights(str(full)).model.state_dict()
    assert all(torch.equal(loaded[k], a["ema"][k]) for k in loaded)


def test_the_weight_average_is_an_exponential_moving_average() -> None:
    assert decay_for(0.1, 200) ** 20 == pytest.approx(0.5)  # half-life: 10 % of 200 steps
    assert decay_for(0.01, 20) == 0.5  # never shorter than one step
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema, expected = Ema(model), {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(i + 1.0)
        model.train()(torch.randn(4, 3))  # BatchNorm's running statistics move, its step count rises
        ema.update(model, 0.75)
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if k.endswith("num_batches_tracked") else 0.75 * expected[k] + 0.25 * v
    got = ema.model.state_dict()
    assert all(torch.allclose(got[k].float(), expected[k].float()) for k in expected)
    assert int(got["1.num_batches_tracked"]) == 3 and not ema.model.training


def test_a_budget_run_plans_and_its_probe_leaves_no_trace(tiny_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    real_probe = budget.probe

    def disturbed_probe(*args: object) -> Costs:  # what a busy machine during the probe looks like
        real = real_probe(*args)  # run, so that its steps must be undone; its step times are replaced by 1-1.5 s
        return Costs({67: 1.0, 99: 1.5}, real.warm_s, real.epoch_s, real.val_s, real.save_s)

    monkeypatch.setattr(budget, "probe", disturbed_probe)
    run = tmp_path / "budget"
    onecycle = ["--set", "schedule.name=onecycle", "--set", "schedule.warmup_epochs=1"]
    assert (
        main(["train", "--out", str(run), *_small_run(tiny_folder), *onecycle, "--epochs", "4", "--budget", "30s"]) == 0
    )
    plan = json.loads((run / "plan.json").read_text())
    assert plan["predicted_s"] <= plan["budget_s"] and plan["max_steps"] >= 5
    # checked on real steps after every epoch's end (epochs of 5 steps: too short for a check mid-epoch), the
    # last one too when it found nothing more fits (then the run ends there, not one step and validation later);
    # the first check timed steps 2-5 against the disturbed probe's 1 s, and planned more steps
    first, final = plan["checks"][0], plan["checks"][-1]
    ended_by_check = final["steps"] == final["step"]
    assert [c["step"] for c in plan["checks"]] == [5 * (e + 1) for e in range(plan["epochs"] - 1 + ended_by_check)]
    assert first["estimated_step_s"] == 1.0 and first["step_s"] < 1.0 and first["steps"] > first["planned_steps"]
    assert set(plan["costs"]["step_s"]) >= {"67", "99"}  # the smallest and the largest crop were measured
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == plan["epochs"] and [r["train_size"] for r in rows] == plan["sizes"] == sorted(plan["sizes"])
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["global_step"] == plan["max_steps"]
    # 1 epoch, <= 30 % of the first plan (the checks keep it: the lr goes on from where it is)
    assert plan["warmup_epochs"] == pytest.approx(min(1, 0.3 * first["planned_steps"] / 5))
    # the run's config.yaml gives the same network without --budget: the probe steps were undone, and the
    # checks' new lengths (schedule.retargets) replay the lr and the crops
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert [k for k, _ in cfg["schedule"]["retargets"]] == [0] + [c["step"] for c in plan["checks"]]
    same = tmp_path / "same"
    assert main(["train", "--out", str(same), *_small_run(tiny_folder), *onecycle, "--epochs", str(plan["epochs"]), "--set",
                 f"train.max_steps={plan['max_steps']}", "--set", f"schedule.warmup_epochs={plan['warmup_epochs']}",
                 "--set", f"schedule.retargets={cfg['schedule']['retargets']}"]) == 0  # fmt: skip
    a, b = (
        ckpt_io.load(run / "checkpoints" / "last.pt")["model"],
        ckpt_io.load(same / "checkpoints" / "last.pt")["model"],
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(r)["train_size"] for r in (same / "metrics.jsonl").read_text().splitlines()] == plan["sizes"]
    # a resumed budget run keeps its plan (config.yaml holds it): nothing is left to do
    assert main(["train", "--resume", str(run)]) == 0
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["global_step"] == plan["max_steps"]
