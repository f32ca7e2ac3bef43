"""`alexnet train --budget 15m`: plan a run that finishes its whole schedule within a wall-clock budget.

The run measures itself before its first real step: a few training steps at the smallest and the largest
crop of its resolution schedule (the model, optimizer and scaler are restored afterwards, so they leave no
trace), two validation batches, and one checkpoint write. A step's cost is fitted as ``a + b * side**2``
(the convolutions scale with the area, fc6-fc8 do not; on this repo's 2-core CPU the fit from 131 and 227 px
predicts the measured 163 and 195 px steps within 8 %). From these it picks the largest number of optimizer
steps whose epochs, validations and checkpoints (and the last validation's BatchNorm recalibration,
``train.bn_recalibrate``, priced at the validation's pace per image) fit in what is left of the budget (less a
2 % margin), and
scales the recipe's schedule to that length: the lr warm-up keeps its length, up to 30 % of the run (never
cut off; ``warmup_for``), the resolution ramp its fractions, and the last epoch may be partial
(``train.max_steps``).

The probe's timed steps can be 20-50 % off what training then measures (2-core AVX2 CPU, one timed step per
crop: a `pip install` during the probe left an 8-minute run ending at 80 % of its budget; three runs without a
known cause ended at 85, 85 and 106 %), so it takes the median of three, and the plan is checked on real
steps (``check_plan``): at a quarter, half and three quarters of the plan, 8 steps into an epoch at a crop
not trained before, and after every epoch's end. Each
check times the steps since the stretch's first (which carries the data loader's start-up), puts that time
in place of the estimate at that crop (the cost fit runs through every crop timed), measures the validation
when there was one, and plans the rest of the run in what is left of the budget (after a validated epoch
the rest may be nothing: the run ends there). The lr goes on from where it
is (``Schedule.retarget``: the decay's progress so far is kept and the rest spread over the new length;
recorded in ``schedule.retargets``), and later epochs take their crops from the new length (an epoch's crop is
the one planned when it began).

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
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..atomic import atomic_write_text
from ..config import Config, parse_duration, save_yaml
from ..data.resolution import allowed_sizes, epoch_sizes, rising
from ..errors import UserError
from ..optim import Schedule
from .epoch import save_epoch
from .probe import Costs, probe
from .setup import Session
from .state import TrainState

log = logging.getLogger("alexnet")
WARMUP_SHARE = 0.3  # one-cycle's usual warm-up share (Smith & Topin 2018; optim.py's default without a warm-up)
MARGIN = 0.02  # of the time left: step times on this CPU vary by about 2-4 % from step to step
CHECK_AT = (0.25, 0.5, 0.75)  # shares of the plan where it is checked mid-epoch (besides every epoch's end): a
# run's first steps were 10-15 % off the rest, either way (2-core AVX2 CPU, 4-minute `fast` runs at 163 px,
# batch 64: 1.90 s per step over steps 1-8 against 1.73 after; 1.53 s over steps 2-8 against ~1.75 after), and a
# single check 8 steps in ended those runs at 91.5 % and 109.7 % of their budgets: one early check is not enough
CHECK_GAP = 8  # steps at least between two checks (the first of each stretch is not timed)


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
                + (f", BatchNorm recalibration {self.costs.recal_s:.0f}s at the end" if self.costs.recal_s else "")
                + ")")  # fmt: skip


def _runs(sizes: list[int]) -> Iterator[tuple[int, int]]:
    for size, group in itertools.groupby(sizes):
        yield size, len(list(group))


@dataclass
class BudgetRun:
    """A --budget run's plan and the clock its checks read (``check_plan``): mid-epoch at global step
    ``next_check`` (None when none is left), and after every epoch's end."""

    plan: Plan
    started: float  # time.monotonic() at the process's start
    device: torch.device
    next_check: int | None
    mark: tuple[float, int] | None = None  # (time.monotonic(), global step) when this stretch's first step ended
    last: tuple[float, int] | None = None  # the same, for the latest step
    timed: int = 0  # steps in the stretch ``pace`` timed last

    def after_step(self, global_step: int) -> None:
        """Called after every training step: a stretch of steps (from an epoch's start or a check to the next
        check) is timed from the end of its first step, which carries the data loader's start-up. (On a GPU the
        latest step's time is when it was queued: a few steps' error over a stretch; the first is synchronized.)"""
        if self.mark is None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last = (time.monotonic(), global_step)
        if self.mark is None:
            self.mark = self.last

    def pace(self) -> float | None:
        """Seconds per step of this stretch (None under two timed steps; ``timed`` says how many); the next
        stretch starts afresh."""
        mark, last, self.mark = self.mark, self.last, None
        if mark is None or last is None:
            self.timed = 0
            return None
        self.timed = last[1] - mark[1]
        return (last[0] - mark[0]) / self.timed if self.timed >= 2 else None


def next_check(plan: Plan, spe: int, done: int) -> int | None:
    """The next mid-epoch check after step ``done``: the first of CHECK_AT's shares of the plan, or CHECK_GAP
    steps into an epoch at a crop no earlier epoch trained, at least CHECK_GAP steps on, not at an epoch's end
    (checked there anyway) nor at the run's. A new crop's time is the probe's until then, from three steps: off
    by 15 % once (2-core AVX2 CPU, 163 px: 1.38 s estimated, 1.62 s trained), and a 4-minute run whose last
    epoch, 38 steps at a new 163 px, began after the last share ended at 105 % of its budget."""
    at = [int(f * plan.max_steps) for f in CHECK_AT]
    if CHECK_GAP < spe:
        at += [e * spe + CHECK_GAP for e in range(1, len(plan.sizes)) if plan.sizes[e] not in plan.sizes[:e]]
    return min((k for k in at if k >= done + CHECK_GAP and k % spe and k < plan.max_steps), default=None)


def _write_plan(s: Session, plan: Plan, spe: int) -> None:
    if s.main:
        save_yaml(s.cfg, s.run_dir / "config.yaml")
        atomic_write_text(s.run_dir / "plan.json", json.dumps(asdict(plan), indent=1))
        s.logger.plan(asdict(plan))
        log.info("%s", plan.describe(spe))


def check_plan(s: Session, st: TrainState, b: BudgetRun, end_s: float | None = None, validated: bool = False) -> None:
    """Plan the rest of the run again from training's own times: mid-epoch (``b.next_check``) and after every
    epoch's end (``end_s``: its end took that long, a validation included when ``validated``). The measured time
    per step replaces the estimate at this epoch's crop; the lr goes on from where it is (``Schedule.retarget``),
    and the crops of later epochs follow the new length (``epoch_size``)."""
    t, d, old, k = s.cfg.train, s.cfg.data, b.plan, st.global_step
    assert d.crop is not None and s.data.train is not None
    spe, mid_epoch = len(s.data.train), end_s is None
    epoch = st.epoch if mid_epoch else st.epoch - 1  # the epoch just timed (end_of_epoch has moved on)
    size, pace = old.sizes[epoch], b.pace()
    got = torch.tensor([pace or 0.0, end_s or 0.0, time.monotonic() - b.started], device=s.device)
    per_step, end, elapsed = distributed.all_reduce_max(got).tolist()
    c = old.costs
    step_s, timed = c.step_s | ({size: per_step} if pace else {}), c.timed | ({size: b.timed} if pace else {})
    costs = Costs(step_s, c.warm_s, c.epoch_s, max(end - c.save_s, 0.0) if validated else c.val_s, c.save_s, timed,
                  c.recal_s)  # fmt: skip
    steps = best_steps(old.budget_s - elapsed, spe, s.cfg, costs, k, size, validated)
    record = {"step": k, "size": size, "step_s": per_step if pace is not None else None,
              "estimated_step_s": c.step(size), "planned_steps": old.max_steps, "steps": steps}  # fmt: skip
    t.max_steps, t.epochs = steps, math.ceil(steps / spe)
    st.schedule.retarget(steps)
    b.plan = Plan(old.budget_s, old.elapsed_s, steps, t.epochs, old.warmup_epochs,
                  old.sizes[: epoch + 1] + planned_sizes(s.cfg, spe, steps, k, size)[epoch + 1 :],
                  elapsed + cost(steps, spe, s.cfg, costs, k, size),
                  costs, [*old.checks, record])  # fmt: skip
    if s.main:
        log.info("budget check at step %d: %s at %dpx (estimated %.2fs); %d steps instead of %d", k,
                 f"{per_step:.2f}s per step" if pace is not None else "too few steps timed", size, c.step(size), steps,
                 old.max_steps)  # fmt: skip
    b.next_check = next_check(b.plan, spe, k)
    _write_plan(s, b.plan, spe)
    if steps == k:  # nothing more fits: the run ends here, and its checkpoint says so (resuming it trains no more)
        save_epoch(s, st)


def plan_run(s: Session, st: TrainState, started: float) -> BudgetRun:
    """Probe, plan, and apply the plan to the config, the schedule and the run directory (config.yaml, plan.json);
    returns the run's BudgetRun, for its checks. ``started``: time.monotonic() at the process's start."""
    t, d = s.cfg.train, s.cfg.data
    assert t.budget is not None and d.crop is not None and s.data.train is not None
    budget, spe = parse_duration(t.budget, "--budget"), len(s.data.train)
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
    plan = Plan(budget, elapsed, steps, t.epochs, s.cfg.schedule.warmup_epochs, planned_sizes(s.cfg, spe, steps),
                elapsed + cost(steps, spe, s.cfg, costs), costs)  # fmt: skip
    _write_plan(s, plan, spe)
    return BudgetRun(plan, started, s.device, next_check(plan, spe, 0))


def warmup_for(recipe_warmup: float, epochs: float) -> float:
    """The recipe's warm-up length, at most WARMUP_SHARE of the planned run. Not scaled with the run: the
    warm-up protects the first steps from a freshly initialised network's large gradients, whatever the run's
    length. Measured (Imagenette store, `fast`, this 2-core CPU): scaled with an 8-minute budget (12 steps to lr
    0.04) the network blew up (epoch-1 train loss 3.02) and stayed at chance (12.0 % top-1 after 96 steps)."""
    return min(recipe_warmup, WARMUP_SHARE * epochs)


def planned_sizes(cfg: Config, spe: int, steps: int, done: int = 0, current: int | None = None) -> list[int]:
    """Every epoch's crop in a run of ``steps`` steps, planned after step ``done`` (``current``: the crop of that
    step's epoch, planned before): an epoch in progress keeps its crop, and later crops never go below it."""
    d = cfg.data
    sizes = epoch_sizes(d.train_end, d.res_start, d.res_ramp, spe, steps)
    first = done // spe  # the epoch of step done+1
    if current is not None:
        if done % spe and first < len(sizes):  # mid-epoch: the epoch in progress keeps its crop
            sizes[first] = current
        sizes[first:] = rising(sizes[first:], current)
    return sizes


def cost(steps: int, spe: int, cfg: Config, c: Costs, done: int = 0, current: int | None = None) -> float:
    """Seconds for steps ``done``..``steps`` of a run of ``steps`` optimizer steps (at an epoch's boundary, that
    epoch's end is done too; ``current``: the crop of step ``done``'s epoch, planned before, which later crops
    never go below): its epochs' steps at their crops, one warm-up per crop not yet timed, per epoch started its
    fixed cost, per epoch ended a checkpoint (plus train.checkpoint_every's) and the validations
    (train.eval_every's, and the last epoch's, with its BatchNorm recalibration)."""
    t, sizes = cfg.train, planned_sizes(cfg, spe, steps, done, current)
    first, started = done // spe, -(-done // spe)  # the epoch of step done+1; the first epoch not yet started
    train = sum(
        (min(spe, steps - e * spe) - max(0, done - e * spe)) * c.step(sizes[e]) for e in range(first, len(sizes))
    )
    new_sizes = len(set(sizes[first:]) - set(c.step_s))
    ends = range(first + 1, len(sizes) + 1)  # 1-based numbers of the epochs whose end is still to come
    saves = len(ends) + (steps // t.checkpoint_every - done // t.checkpoint_every if t.checkpoint_every else 0)
    vals = sum(1 for e in ends if e == len(sizes) or (t.eval_every and e % t.eval_every == 0))
    fixed = new_sizes * c.warm_s + (len(sizes) - started) * c.epoch_s + vals * c.val_s + saves * c.save_s
    return train + fixed + (c.recal_s if ends else 0.0)  # the last epoch's end recalibrates BatchNorm


def best_steps(left: float, spe: int, cfg: Config, c: Costs, done: int = 0, current: int | None = None,
               validated_end: bool = False) -> int:  # fmt: skip
    """The most steps whose ``cost`` from ``done`` fits in ``left`` seconds less the margin (0 if none). When
    steps were done, at least done + 1 (the run ends with a validated epoch), unless ``validated_end``: step
    ``done`` ended an epoch that was validated, and the run may end there."""
    left *= 1 - MARGIN
    lo, hi = done, done + max(1, int(max(left, 0.0) / c.step(min(c.step_s))) + 1)
    while lo < hi:  # cost grows with steps (more steps never make a run cheaper); bisect on it
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid, spe, cfg, c, done, current) <= left else (lo, mid - 1)
    return max(lo, done + 1) if done and not validated_end else lo
