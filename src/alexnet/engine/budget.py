"""`alexnet train --budget 15m`: plan a run that finishes its whole schedule within a wall-clock budget.

The run measures itself before its first real step: a few training steps at the smallest and the largest
crop of its resolution schedule (the model, optimizer and scaler are restored afterwards, so they leave no
trace), two validation batches, and one checkpoint write. A step's cost is fitted as ``a + b * side**2``
(the convolutions scale with the area, fc6-fc8 do not; on this repo's 2-core CPU the fit from 131 and 227 px
predicts the measured 163 and 195 px steps within 8 %). From these it picks the largest number of optimizer
steps whose epochs, validations and checkpoints fit in what is left of the budget (less a 2 % margin), and
scales the recipe's schedule to that length: the lr warm-up keeps its length, up to 30 % of the run (never
cut off; ``warmup_for``), the resolution ramp its fractions, and the last epoch may be partial
(``train.max_steps``).

The probe's timed steps can be 20-50 % off what training then measures (2-core AVX2 CPU, one timed step per
crop: a `pip install` during the probe left an 8-minute run ending at 80 % of its budget; three runs without a
known cause ended at 85, 85 and 106 %), so it takes the median of three, and the plan is checked on real
steps (``check_plan``): at a quarter, half and three quarters of the plan and after every epoch's end. Each
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

import copy
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt_io
from .. import distributed
from ..atomic import atomic_write_text
from ..config import Config, parse_duration, save_yaml
from ..data.resolution import allowed_sizes, epoch_sizes, rising
from ..errors import UserError
from ..inference import evaluate
from ..optim import Schedule
from .epoch import forward, save_epoch
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
class Costs:
    """Seconds (the slowest rank's): what the probe measured, then what training measured."""

    step_s: dict[int, float]  # per training step, at each crop timed (training's own time replaces the probe's)
    warm_s: float  # extra cost of a new crop's first step (allocation, autotuning, compilation)
    epoch_s: float  # fixed cost per epoch beyond its steps (data-loader start-up)
    val_s: float  # one validation pass
    save_s: float  # one checkpoint
    timed: dict[int, int] = field(default_factory=dict)  # how many steps each crop's time is from (default 1)

    def step(self, size: int) -> float:
        """Seconds per step at ``size``: ``a + b * size**2``, least squares through the timed crops, each
        weighted by its steps timed (a check's dozens of steps outweigh the probe's three)."""
        xs, ys = [z * z for z in self.step_s], list(self.step_s.values())
        ws = [self.timed.get(z, 1) for z in self.step_s]
        mx, my = (sum(w * v for w, v in zip(ws, vs)) / sum(ws) for vs in (xs, ys))
        sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
        if sxx == 0:
            return my
        b = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
        return max(my + b * (size * size - mx), 1e-6)


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
                f"{self.costs.save_s:.1f}s per epoch)")  # fmt: skip


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
    """The next mid-epoch check after step ``done``: the first of CHECK_AT's shares of the plan at least
    CHECK_GAP steps on, not at an epoch's end (checked there anyway) nor at the run's."""
    at = (int(f * plan.max_steps) for f in CHECK_AT)
    return min((k for k in at if k >= done + CHECK_GAP and k % spe and k < plan.max_steps), default=None)


def _write_plan(s: Session, plan: Plan, spe: int) -> None:
    if s.main:
        save_yaml(s.cfg, s.run_dir / "config.yaml")
        atomic_write_text(s.run_dir / "plan.json", json.dumps(asdict(plan), indent=1))
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
    costs = Costs(step_s, c.warm_s, c.epoch_s, max(end - c.save_s, 0.0) if validated else c.val_s, c.save_s, timed)
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
    sizes = sorted({allowed_sizes(d.crop, d.res_start)[0] if d.res_start else d.crop, d.crop})
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
    assert d.crop is not None
    sizes = epoch_sizes(d.crop, d.res_start, d.res_ramp, spe, steps)
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
    (train.eval_every's, and the last epoch's)."""
    t, sizes = cfg.train, planned_sizes(cfg, spe, steps, done, current)
    first, started = done // spe, -(-done // spe)  # the epoch of step done+1; the first epoch not yet started
    train = sum((min(spe, steps - e * spe) - max(0, done - e * spe)) * c.step(sizes[e]) for e in range(first, len(sizes)))
    new_sizes = len(set(sizes[first:]) - set(c.step_s))
    ends = range(first + 1, len(sizes) + 1)  # 1-based numbers of the epochs whose end is still to come
    saves = len(ends) + (steps // t.checkpoint_every - done // t.checkpoint_every if t.checkpoint_every else 0)
    vals = sum(1 for e in ends if e == len(sizes) or (t.eval_every and e % t.eval_every == 0))
    return train + new_sizes * c.warm_s + (len(sizes) - started) * c.epoch_s + vals * c.val_s + saves * c.save_s


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


def probe(s: Session, st: TrainState, sizes: list[int]) -> Costs:
    """Time training steps at ``sizes``, a validation prefix and a checkpoint, leaving the state as it was."""
    gpu = s.device.type != "cpu"
    # GPUs autotune in their first steps. CPU steps take seconds and mostly vary little (2-core AVX2 CPU, 227 px,
    # batch 128: 6.63, 6.38, 6.44 s), but one timed step per size was 25 % too slow once in seven runs (227 px,
    # batch 64: 3.82 s against 2.8-3.1 s measured in training) and the run ended at 85 % of its budget: the
    # median of three
    warm, timed = (3, 10) if gpu else (1, 3)
    snapshot = _snapshot(st)
    firsts, step_s = [], {}
    for size in sizes:
        first, steady = _time_steps(s, st, size, warm, timed)
        firsts.append(first)
        step_s[size] = steady
    _restore(st, snapshot)
    val_s = _time_validation(s)
    save_s = _time_save(s, st)
    first_excess = [f - step_s[z] for f, z in zip(firsts, sizes)]
    numbers = [*step_s.values(), max(first_excess[0], 0.0), max(first_excess[-1], 0.0), val_s, save_s]
    agreed = distributed.all_reduce_max(torch.tensor(numbers, device=s.device)).tolist()  # float32: MPS has no float64
    k = len(sizes)
    return Costs(dict(zip(sizes, agreed[:k])), agreed[k], agreed[k + 1], agreed[k + 2], agreed[k + 3],
                 dict.fromkeys(sizes, timed))  # fmt: skip


def _sync(s: Session) -> None:
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)


def _time_steps(s: Session, st: TrainState, size: int, warm: int, timed: int) -> tuple[float, float]:
    """(the first step's seconds, the median of the ``timed`` steps after ``warm`` warm-up steps) at ``size``;
    real batches of epoch 0 through the run's own augmentation, forward, backward and optimizer step."""
    assert s.data.train is not None
    times, t0 = [], time.perf_counter()
    for x, y, idx in itertools.islice(s.data.train.epoch(0, size=size), warm + timed):
        loss, _, _ = forward(s, st, x, y, idx, size)
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
        if st.ema is not None:
            st.ema.update(st.model, 0.5)
        _sync(s)
        now = time.perf_counter()
        times.append(now - t0)
        t0 = now
    steady = times[warm:] or times[-1:]
    return times[0], statistics.median(steady)


def _time_validation(s: Session, batches: int = 2) -> float:
    """One validation pass: the time to its first batch (data-loader start-up) plus the batches' count times
    the median of the batches after the first (the first is a warm-up: counted, it overestimated a 3925-image
    Imagenette validation by 10 s of 53 on this CPU)."""
    stamps: list[float] = []

    class Prefix:  # the first batches of the validation set, time-stamped as evaluate() asks for them
        def epoch(self, epoch: int) -> Iterator[Any]:
            for batch in itertools.islice(s.data.val.epoch(epoch), batches):
                stamps.append(time.perf_counter())
                yield batch
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    t = s.cfg.train
    assert s.data.preprocess.crop is not None
    evaluate(s.eval_model, Prefix(), s.data.normalizer, s.data.preprocess.crop, len(s.data.class_names),  # type: ignore[arg-type]
             s.device, t.eval_tta, t.amp, t.channels_last)  # fmt: skip
    _sync(s)
    if len(stamps) < 3:  # a one-batch validation set
        return time.perf_counter() - t0
    per = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    full_batches = s.data.val.num_samples / (s.data.val.batch_size * s.dist.world)  # the last one may be smaller
    return (stamps[0] - t0) + statistics.median(per) * max(1.0, full_batches)


def _time_save(s: Session, st: TrainState) -> float:
    """One checkpoint write (every rank builds the state; rank 0 writes a scratch file and removes it)."""
    t0 = time.perf_counter()
    ck = st.state_dict()
    if s.main:
        scratch = s.run_dir / "checkpoints" / ".budget-probe.pt"
        scratch.parent.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_save(ck, scratch)
        scratch.unlink(missing_ok=True)
    return time.perf_counter() - t0


def _tensors(st: TrainState) -> Iterator[torch.Tensor]:
    models = [st.model] + ([st.ema.model] if st.ema is not None else [])
    return itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in models)


def _snapshot(st: TrainState) -> dict[str, Any]:
    tensors = [t.detach().clone() for t in _tensors(st)]
    return {"tensors": tensors, "optimizer": copy.deepcopy(st.optimizer.state_dict()), "scaler": st.scaler.state_dict()}


def _restore(st: TrainState, snap: dict[str, Any]) -> None:
    with torch.no_grad():
        for t, saved in zip(_tensors(st), snap["tensors"]):
            t.copy_(saved)
    st.optimizer.load_state_dict(snap["optimizer"])
    st.optimizer.zero_grad(set_to_none=True)
    if snap["scaler"]:
        st.scaler.load_state_dict(snap["scaler"])

