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
known cause ended at 85, 85 and 106 %), so it takes the median of three. And the plan is checked once, by
the end of the lr warm-up in the first epoch (``CheckIn``): the first real steps (after the first, which
carries the data loader's start-up) are timed and replace the probe's estimate at that crop, and the run is planned again from there (``check_plan``); the lr up to that
step does not depend on the run's length, so nothing already done changes. The later crops' estimates are
not checked (the 16- and 32-minute runs above were off at 227 px).

The plan is written into the run's config.yaml (train.epochs, train.max_steps, schedule.warmup_epochs) and
plan.json, so a resumed run keeps it (a run resumed before its check-in keeps the first plan). Under torchrun
every rank probes together (DDP steps need all ranks), the timings are agreed with a max all-reduce, and
every rank computes the same plan from the same numbers.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt_io
from .. import distributed
from ..atomic import atomic_write_text
from ..config import Config, parse_duration, save_yaml
from ..data.resolution import allowed_sizes, epoch_sizes
from ..errors import UserError
from ..inference import evaluate
from ..optim import Schedule
from .epoch import forward
from .setup import Session
from .state import TrainState

log = logging.getLogger("alexnet")
WARMUP_SHARE = 0.3  # one-cycle's usual warm-up share (Smith & Topin 2018; optim.py's default without a warm-up)
MARGIN = 0.02  # of the time left: step times on this CPU vary by about 2-4 % from step to step
CHECKIN_STEPS = 8  # the plan is checked after this many real steps, the last 7 timed (~12 s at 131 px, batch 64,
# on this repo's 2-core CPU; timing all 8 less the probe's epoch start-up measured 1.90 s per step at 163 px
# where the rest of the epoch ran at 1.73: the first steps are slower)


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
    """What the probe measured (seconds; the slowest rank's)."""

    step_s: dict[int, float]  # per training step, at each probed crop
    warm_s: float  # extra cost of a new crop's first step (allocation, autotuning, compilation)
    epoch_s: float  # fixed cost per epoch beyond its steps (data-loader start-up)
    val_s: float  # one validation pass
    save_s: float  # one checkpoint

    def step(self, size: int) -> float:
        """Seconds per step at ``size``: ``a + b * size**2`` through the probed sizes."""
        (s0, t0), (s1, t1) = min(self.step_s.items()), max(self.step_s.items())
        if s0 == s1:
            return t0
        b = (t1 - t0) / (s1 * s1 - s0 * s0)
        return max(t0 + b * (size * size - s0 * s0), 1e-6)


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
    checked: dict[str, Any] | None = None  # the check-in's measurement and the plan it replaced

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
class CheckIn:
    """Where the plan is checked (``check_plan``): after global step ``step`` (real steps, first epoch, lr warm-up).
    Its window starts after the first step (``after_step``), which also carries the data loader's start-up."""

    step: int
    plan: Plan
    started: float  # time.monotonic() at the process's start
    device: torch.device
    mark: float | None = None  # time.monotonic() when the first real step ended

    def after_step(self, global_step: int) -> None:
        if global_step == 1:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.mark = time.monotonic()


def checkin_for(cfg: Config, plan: Plan, spe: int, started: float, device: torch.device) -> CheckIn | None:
    """The check-in step: CHECKIN_STEPS, but inside the first epoch and, for per-step lr schedules, not after the
    warm-up's end (up to there the lr does not depend on the run's length: at the end it is the peak); None when
    no such step exists (at least 3: two timed steps after the first)."""
    limits = [CHECKIN_STEPS, spe - 1, plan.max_steps - 1]
    if cfg.schedule.name in ("cosine", "onecycle"):
        limits.append(int(cfg.schedule.warmup_epochs * spe))
    k = min(limits)
    return CheckIn(k, plan, started, device) if k >= 3 else None


def _write_plan(s: Session, plan: Plan, spe: int) -> None:
    if s.main:
        save_yaml(s.cfg, s.run_dir / "config.yaml")
        atomic_write_text(s.run_dir / "plan.json", json.dumps(asdict(plan), indent=1))
        log.info("%s", plan.describe(spe))


def check_plan(s: Session, st: TrainState, ci: CheckIn) -> Plan:
    """Plan again from the first ``ci.step`` real steps: the time per step of all but the first (which carries
    the data loader's start-up) replaces the probe's estimate at this crop (the fit keeps the probed crop
    farthest from it). Applied only where it keeps this epoch's crop (the epoch is being trained)."""
    t, d, old, k = s.cfg.train, s.cfg.data, ci.plan, st.global_step
    assert d.crop is not None and s.data.train is not None and ci.mark is not None
    spe, now = len(s.data.train), time.monotonic()
    measured = torch.tensor([(now - ci.mark) / (k - 1), now - ci.started], device=s.device)
    per_step, elapsed = distributed.all_reduce_max(measured).tolist()
    size = old.sizes[0]
    far = max(old.costs.step_s, key=lambda z: abs(z - size))
    step_s = {size: per_step} | ({far: old.costs.step_s[far]} if far != size else {})
    costs = Costs(step_s, old.costs.warm_s, old.costs.epoch_s, old.costs.val_s, old.costs.save_s)
    steps = max(k + 1, best_steps(old.budget_s - elapsed + k * per_step, spe, s.cfg, costs))
    sizes = epoch_sizes(d.crop, d.res_start, d.res_ramp, spe, steps)
    if sizes[0] != size:
        log.info("budget check at step %d: %d steps would change this epoch's crop; keeping the plan", k, steps)
        return old
    checked = {"step": k, "step_s": per_step, "size": size, "probed_step_s": old.costs.step(size),
               "planned_steps": old.max_steps}  # fmt: skip
    t.max_steps, t.epochs = steps, math.ceil(steps / spe)
    st.schedule.retarget(steps)
    plan = Plan(old.budget_s, old.elapsed_s, steps, t.epochs, old.warmup_epochs, sizes,
                elapsed - k * per_step + cost(steps, spe, s.cfg, costs), costs, checked)  # fmt: skip
    if s.main:
        log.info("budget check at step %d: %.2fs per step at %dpx (the probe said %.2fs); %d steps instead of %d", k,
                 per_step, size, old.costs.step(size), steps, old.max_steps)  # fmt: skip
    _write_plan(s, plan, spe)
    return plan


def plan_run(s: Session, st: TrainState, started: float) -> CheckIn | None:
    """Probe, plan, and apply the plan to the config, the schedule and the run directory (config.yaml, plan.json);
    returns where to check it. ``started``: time.monotonic() at the process's start."""
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
    t.max_steps, t.epochs = steps, math.ceil(steps / spe)
    s.cfg.schedule.warmup_epochs = warmup_for(s.cfg.schedule.warmup_epochs, steps / spe)
    lr = st.schedule.base_lr
    st.schedule = Schedule(st.optimizer, s.cfg.schedule, lr, t.epochs, spe, steps)
    plan = Plan(budget, elapsed, steps, t.epochs, s.cfg.schedule.warmup_epochs,
                epoch_sizes(d.crop, d.res_start, d.res_ramp, spe, steps), elapsed + cost(steps, spe, s.cfg, costs), costs)  # fmt: skip
    _write_plan(s, plan, spe)
    return checkin_for(s.cfg, plan, spe, started, s.device)


def warmup_for(recipe_warmup: float, epochs: float) -> float:
    """The recipe's warm-up length, at most WARMUP_SHARE of the planned run. Not scaled with the run: the
    warm-up protects the first steps from a freshly initialised network's large gradients, whatever the run's
    length. Measured (Imagenette store, `fast`, this 2-core CPU): scaled with an 8-minute budget (12 steps to lr
    0.04) the network blew up (epoch-1 train loss 3.02) and stayed at chance (12.0 % top-1 after 96 steps)."""
    return min(recipe_warmup, WARMUP_SHARE * epochs)


def cost(steps: int, spe: int, cfg: Config, c: Costs) -> float:
    """Seconds for a run of ``steps`` optimizer steps: its epochs' steps at their crops, one warm-up per new crop,
    per epoch its fixed cost and a checkpoint (plus train.checkpoint_every's), and the validations
    (train.eval_every's, and the last epoch's)."""
    d, t = cfg.data, cfg.train
    assert d.crop is not None
    sizes = epoch_sizes(d.crop, d.res_start, d.res_ramp, spe, steps)
    per_epoch = [min(spe, steps - e * spe) for e in range(len(sizes))]
    train = sum(k * c.step(size) for k, size in zip(per_epoch, sizes))
    new_sizes = len(set(sizes) - set(c.step_s))
    saves = len(sizes) + (steps // t.checkpoint_every if t.checkpoint_every else 0)
    vals = sum(1 for e in range(1, len(sizes) + 1) if e == len(sizes) or (t.eval_every and e % t.eval_every == 0))
    return train + new_sizes * c.warm_s + len(sizes) * c.epoch_s + vals * c.val_s + saves * c.save_s


def best_steps(left: float, spe: int, cfg: Config, c: Costs) -> int:
    """The most steps whose ``cost`` fits in ``left`` seconds less the margin (0 if none)."""
    left *= 1 - MARGIN
    lo, hi = 0, max(1, int(left / c.step(min(c.step_s))) + 1)
    while lo < hi:  # cost grows with steps (more steps never make a run cheaper); bisect on it
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid, spe, cfg, c) <= left else (lo, mid - 1)
    return lo


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
    return Costs(dict(zip(sizes, agreed[:k])), agreed[k], agreed[k + 1], agreed[k + 2], agreed[k + 3])


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

