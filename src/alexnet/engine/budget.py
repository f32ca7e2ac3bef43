"""`alexnet train --budget 15m`: plan a run that finishes its whole schedule within a wall-clock budget.

The run measures itself before its first real step: a few training steps at the smallest and the largest
crop of its resolution schedule (the model, optimizer and scaler are restored afterwards, so they leave no
trace), two validation batches, and one checkpoint write. A step's cost is fitted as ``a + b * side**2``
(the convolutions scale with the area, fc6-fc8 do not; on this repo's 2-core CPU the fit from 131 and 227 px
predicts the measured 163 and 195 px steps within 8 %). From these it picks the largest number of optimizer
steps whose epochs, validations and checkpoints (and the last validation's BatchNorm recalibration,
``train.bn_recalibrate``, priced at the validation's pace per image) fit in what is left of the budget (less a
2 % margin: engine/planner.py, which finds the true longest plan), and scales the recipe's schedule to that
length: the lr warm-up keeps its length, up to 30 % of the run (never cut off; ``warmup_for``), the resolution
ramp its fractions, and the last epoch may be partial (``train.max_steps``).

The probe's timed steps can be 20-50 % off what training then measures (2-core AVX2 CPU, one timed step per
crop: a `pip install` during the probe left an 8-minute run ending at 80 % of its budget; three runs without a
known cause ended at 85, 85 and 106 %), so it takes the median of three, and the plan is checked on real
steps (``check_plan``) at the sync steps (train.sync_every) where the host reads the device anyway: every
5 % of the plan (planner.CHECK_AT), 8 steps into an epoch at a crop not trained before,
soon after a stretch that ran slow, and at every epoch's last step, before its end (its validation, its
checkpoint), so that a check that ends the run there makes that end the last: validated after the BatchNorm
recalibration, as the plan priced it. Each check times the steps since the stretch's first sync step (the first
of an epoch carries the data loader's start-up), plans with each crop's median pace over all its stretches and
the machine's present slowness when the latest stretch ran slower than that (engine/planner.py ``Pace``), and
plans the rest of the run in what is left of the budget (possibly nothing: the run ends at that step). The lr
goes on from where it is (``Schedule.retarget``: the decay's progress so far is kept and the rest spread over
the new length; recorded in ``schedule.retargets``), and later epochs take their crops from the new length (an
epoch's crop is the one planned when it began).

The plan is written into the run's config.yaml (train.epochs, train.max_steps, schedule.warmup_epochs,
schedule.retargets) and plan.json, and every checkpoint carries the config of its moment, so a resumed run
keeps the plan of the checkpoint it resumes from (and is not checked again: its budget was the first
process's). Under torchrun every rank probes together (DDP steps need all ranks), the timings (the probe's and
each check's) are agreed with a max all-reduce, and every rank computes the same plan from the same numbers.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import parse_duration, save_yaml
from ..data.resolution import allowed_sizes
from ..errors import UserError
from ..io.atomic import atomic_write_text
from ..parallel import distributed
from .epoch import epoch_size, steps_per_epoch, total_steps
from .optim import Schedule
from .planner import Costs, Pace, Stretch, best_steps, cost, next_check, planned_sizes, warmup_for
from .probe import probe
from .setup import Session
from .state import TrainState

log = logging.getLogger("alexnet")

PRESENT_STEPS = 8  # steps at least whose intervals' median is the machine's present pace (BudgetRun.stretch)


def command_age() -> float:
    """Seconds since this `alexnet` command started: the process's age (Linux, from /proc, so Python's and
    torch's imports count too) when this process is the command (`alexnet ...`, `python -m alexnet`, torchrun's
    workers); 0 when train is called from other Python code (a notebook, a test) or without /proc."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if argv0.stem != "alexnet" and (argv0.name, argv0.parent.name) != ("__main__.py", "alexnet"):
        return 0.0
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


@dataclass
class Plan:
    budget_s: float
    elapsed_s: float  # already spent at planning time: start-up and the probe
    max_steps: int
    epochs: int
    warmup_epochs: float
    sizes: list[int]  # the training crop of each epoch
    predicted_s: float  # the whole run, start-up included
    costs: Costs
    checks: list[dict[str, Any]] = field(default_factory=list)  # each check on real steps (``check_plan``)

    def describe(self, spe: int) -> str:
        m = lambda s: f"{int(s // 60)}m{int(round(s % 60)):02d}s"  # noqa: E731
        sizes = ", ".join(f"{s}px" + (f" x{k}" if k > 1 else "") for s, k in _runs(self.sizes))
        return (f"budget {m(self.budget_s)}: {self.max_steps} steps = {self.max_steps / spe:.2f} epochs (crops per epoch: "
                f"{sizes}), "
                f"lr warm-up {self.warmup_epochs:.2f} epochs; predicted end at {m(self.predicted_s)} "
                f"(start-up and probe {m(self.elapsed_s)}, validation {m(self.costs.val_s)} and checkpoint "
                f"{self.costs.save_s:.1f}s per epoch"
                + (f", the last validation {self.costs.last_val:.0f}x that (train.final_tta)"
                   if self.costs.last_val != 1 else "")
                + (f", BatchNorm recalibration {self.costs.recal_s:.0f}s at the end" if self.costs.recal_s else "")
                + ")")  # fmt: skip


def _runs(sizes: list[int]) -> Iterator[tuple[int, int]]:
    for size, group in itertools.groupby(sizes):
        yield size, len(list(group))


@dataclass
class BudgetRun:
    """A --budget run's plan, its clock and its checks (``check_plan``): mid-epoch at global step ``next_check``
    (None when none is left) and at every epoch's last step, called from the sync steps (``on_sync``)."""

    plan: Plan
    started: float  # clock() at the process's start
    base: Costs  # the probe's costs, with the validation's time as training measured it (``after_end``)
    next_check: int | None
    pace: Pace = field(default_factory=Pace)
    times: list[tuple[float, int]] = field(default_factory=list)  # (clock(), global step) at this stretch's sync steps
    intervals: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # the crop's latest (stretch)
    clock: Callable[[], float] = time.monotonic

    def tick(self, global_step: int) -> None:
        """A sync step (engine/epoch.py ``is_sync_step``), where the host has just read the device, so the time is
        when the device finished the step, on GPUs too: a stretch of steps (from an epoch's start or a check to the
        next check) is timed from its first sync step, after the data loader's start-up."""
        self.times.append((self.clock(), global_step))

    def stretch(self, size: int = 0) -> tuple[int, float, int, float]:
        """(steps, seconds) of this stretch and of its last quarter, by steps, at least one sync step's (how fast
        the machine runs now); zeros under two sync steps. The last quarter's seconds are its steps at the median
        pace of its intervals between sync steps, or of the latest intervals at this crop (``size``), the
        stretches before this one's included, where the quarter has fewer than three or covers fewer than
        PRESENT_STEPS steps: under a load checks come every 4 steps, and one step is noise, not the machine's pace
        (on a 2-core AMD EPYC under a CPU hog one step at 6.2x the crop's usual priced the final validation and
        recalibration at 145 s for about 53, and the run ended at 77 %), and so are three (on a 2-core AVX2 EPYC
        three quick steps in a lasting load lengthened a 15-minute plan by 18 steps two checks before its end,
        and the run ended at 103 %). The next stretch's own times start afresh."""
        times, self.times = self.times, []
        if len(times) < 2:
            return 0, 0.0, 0, 0.0
        (t0, k0), (t1, k1) = times[0], times[-1]
        kq = next(k for _, k in reversed(times[:-1]) if k <= k1 - (k1 - k0) / 4)
        intervals = [((b - a) / (j - i), j - i) for (a, i), (b, j) in zip(times, times[1:])]  # (step time, steps)
        latest = self.intervals.get(size, []) + intervals
        n = max(3, sum(1 for _, k in times[:-1] if k >= kq))  # the quarter's intervals, at least three
        while n < len(latest) and sum(k for _, k in latest[-n:]) < PRESENT_STEPS:
            n += 1
        self.intervals = {size: latest[-PRESENT_STEPS:]}  # a crop's latest, while it is trained
        return k1 - k0, t1 - t0, k1 - kq, (k1 - kq) * statistics.median(p for p, _ in latest[-n:])

    def after_end(self, seconds: float, validated: bool) -> None:
        """An epoch's end took ``seconds`` (its checkpoint, and its validation when ``validated``)."""
        if validated:  # with the index of the stretch before it (-1: none)
            self.pace.vals.append((max(seconds - self.base.save_s, 1e-3), len(self.pace.stretches) - 1))

    def hook(self, s: Session, st: TrainState) -> Callable[[int], None]:
        """What train_one_epoch calls at every sync step: the clock, and the checks that fall there."""
        return lambda step: on_sync(s, st, self, step)


def on_sync(s: Session, st: TrainState, b: BudgetRun, step: int) -> None:
    b.tick(step)
    epoch_end = st.step_in_epoch == steps_per_epoch(s)
    if step < total_steps(s) and (step == b.next_check or epoch_end):
        check_plan(s, st, b)


def check_plan(s: Session, st: TrainState, b: BudgetRun) -> None:
    """Plan the rest of the run again from training's own times, at global step ``st.global_step`` (mid-epoch, or
    an epoch's last step before its end): the lr goes on from where it is (``Schedule.retarget``), and the crops
    of later epochs follow the new length (``epoch_size``); the run may end at this step."""
    t, old, k, spe = s.cfg.train, b.plan, st.global_step, steps_per_epoch(s)
    size = epoch_size(s, st.epoch)
    timed, seconds, recent, recent_s = b.stretch(size)
    got = torch.tensor([seconds, recent_s, b.clock() - b.started], device=s.device)
    seconds, recent_s, elapsed = distributed.all_reduce_max(got).tolist()  # the slowest rank's
    if timed >= 2:
        b.pace.stretches.append(Stretch(size, timed, seconds))
    costs = b.pace.costs(b.base, Stretch(size, recent, recent_s) if recent >= 1 else None)
    steps = best_steps(old.budget_s - elapsed, spe, s.cfg, costs, k, size)
    record = {"step": k, "size": size, "step_s": seconds / timed if timed >= 2 else None,
              "estimated_step_s": old.costs.step(size), "load": round(costs.load, 3), "planned_steps": old.max_steps,
              "steps": steps}  # fmt: skip
    t.max_steps, t.epochs = steps, math.ceil(steps / spe)
    st.schedule.retarget(steps)
    b.plan = Plan(old.budget_s, old.elapsed_s, steps, t.epochs, old.warmup_epochs,
                  old.sizes[: st.epoch + 1] + planned_sizes(s.cfg, spe, steps, k, size)[st.epoch + 1 :],
                  elapsed + cost(steps, spe, s.cfg, costs, k, size), costs, [*old.checks, record])  # fmt: skip
    if s.main:
        pace = f"{seconds / timed:.2f}s per step" if timed >= 2 else "too few steps timed"
        log.info("budget check at step %d: %s at %dpx (estimated %.2fs%s); %d steps instead of %d", k, pace, size,
                 old.costs.step(size), f", machine {costs.load:.2f}x slower" if costs.load > 1 else "", steps,
                 old.max_steps)  # fmt: skip
    b.next_check = next_check(steps, b.plan.sizes, spe, k, t.sync_every or 1, soon=costs.load > 1)
    _write_plan(s, b.plan, spe)


def _write_plan(s: Session, plan: Plan, spe: int) -> None:
    if s.main:
        save_yaml(s.cfg, s.run_dir / "config.yaml")
        atomic_write_text(s.run_dir / "plan.json", json.dumps(asdict(plan), indent=1))
        s.logger.plan(asdict(plan))
        log.info("%s", plan.describe(spe))


def plan_run(s: Session, st: TrainState, started: float) -> BudgetRun:
    """Probe, plan, and apply the plan to the config, the schedule and the run directory (config.yaml, plan.json);
    returns the run's BudgetRun, for its checks. ``started``: time.monotonic() at the process's start."""
    t, d = s.cfg.train, s.cfg.data
    assert t.budget is not None and d.crop is not None and s.data.train is not None
    budget, spe = parse_duration(t.budget, "--budget"), steps_per_epoch(s)
    sizes = sorted({allowed_sizes(d.train_end, d.res_start)[0] if d.res_start else d.train_end, d.train_end})
    costs = probe(s, st, sizes)
    elapsed = float(distributed.all_reduce_max(torch.tensor(time.monotonic() - started, device=s.device)))
    steps = best_steps(budget - elapsed, spe, s.cfg, costs)
    if steps < min(spe, 10):
        raise UserError(f"--budget {t.budget} is too short here: start-up and measuring took {elapsed:.0f}s, and "
                        f"{min(spe, 10)} steps with one validation need {cost(min(spe, 10), spe, s.cfg, costs):.0f}s more")  # fmt: skip
    t.max_steps, t.epochs, s.cfg.schedule.retargets = steps, math.ceil(steps / spe), []
    s.cfg.schedule.warmup_epochs = warmup_for(s.cfg.schedule.warmup_epochs, steps / spe)
    lr = st.schedule.base_lr
    st.schedule = Schedule(st.optimizer, s.cfg.schedule, lr, t.epochs, spe, steps)
    sizes = planned_sizes(s.cfg, spe, steps)
    plan = Plan(budget, elapsed, steps, t.epochs, s.cfg.schedule.warmup_epochs, sizes,
                elapsed + cost(steps, spe, s.cfg, costs), costs)  # fmt: skip
    _write_plan(s, plan, spe)
    return BudgetRun(plan, started, replace(costs), next_check(steps, sizes, spe, 0, t.sync_every or 1))
