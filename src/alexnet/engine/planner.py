"""The --budget run's cost model and plan search: pure functions of what was measured (engine/budget.py measures
and applies them). Every epoch's crop in a run of N steps (``planned_sizes``), what the rest of such a run costs
(``cost``), the most steps that fit (``best_steps``), where the plan is checked (``next_check``), and the step
time a check plans with (``Pace``).

The search: a longer plan moves whole epochs to cheaper crops (progressive resizing's ramp is a share of the
run), so cost does not grow with steps: with the suite's test costs (74 steps an epoch, 131 -> 227 px),
cost(85 steps) = 396.5 s but cost(86) = 310.8 s, and a bisection planned 384 steps where 435 fit. Within one
number of epochs every epoch's crop can only fall as the run lengthens (its midpoint is a smaller share of it),
so the steps split into segments of constant crops, found by bisection, inside which cost does grow: the
longest plan that fits is searched from the longest number of epochs down, each skipped at once when even its
cheapest run cannot fit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config import Config
from ..data.resolution import allowed_sizes, epoch_sizes, rising

WARMUP_SHARE = 0.3  # one-cycle's usual warm-up share (Smith & Topin 2018; optim.py's default without a warm-up)
MARGIN = 0.02  # of the time left: step times on this CPU vary by about 2-4 % from step to step
CHECK_AT = tuple(i / 20 for i in range(1, 20))  # shares of the plan where it is checked mid-epoch (besides every
# epoch's end): every 5 %, so a load that comes (or goes) is planned for within a twentieth of the run (a run whose
# load came late and lasted ended at 108.7 % of its budget with checks at a quarter, half and three quarters:
# tests/test_budget.py simulates it). A check is cheap: at a sync step, in the loop (the loader goes on), one plan
# search. A run's first steps were 10-15 % off the rest, either way (2-core AVX2 CPU, 4-minute `fast` runs at
# 163 px, batch 64: 1.90 s per step over steps 1-8 against 1.73 after), and a single check 8 steps in ended those
# runs at 91.5 % and 109.7 % of their budgets
CHECK_GAP = 8  # steps at least between two checks (the first of each stretch is not timed)
LOADED = 1.15  # a stretch this much slower than its crop's usual pace: the machine is loaded now (step times of
# one crop vary 10-15 % between stretches on the 2-core AVX2 CPU, above)


@dataclass
class Costs:
    """Seconds (the slowest rank's): what the probe measured, then what training measured."""

    step_s: dict[int, float]  # per training step, at each crop timed (a robust estimate once training timed it)
    warm_s: float  # extra cost of a new crop's first step (allocation, autotuning, compilation)
    epoch_s: float  # fixed cost per epoch beyond its steps (data-loader start-up)
    val_s: float  # one validation pass
    save_s: float  # one checkpoint
    timed: dict[int, int] = field(default_factory=dict)  # how many steps each crop's time is from (default 1)
    recal_s: float = 0.0  # train.bn_recalibrate before the last validation (its images at a validation's pace)
    load: float = 1.0  # how much slower than its usual pace the machine steps now (``Pace.costs``)
    last_val: float = 1.0  # the last validation's cost in validations (train.final_tta's views over eval_tta's)

    def step(self, size: int) -> float:
        """Seconds per step at ``size``: ``a + b * size**2``, least squares through the timed crops, each
        weighted by its steps timed (a check's dozens of steps outweigh the probe's three), times ``load``."""
        xs, ys = [z * z for z in self.step_s], list(self.step_s.values())
        ws = [self.timed.get(z, 1) for z in self.step_s]
        mx, my = (sum(w * v for w, v in zip(ws, vs)) / sum(ws) for vs in (xs, ys))
        sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
        if sxx == 0:
            return my * self.load
        b = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
        return max(my + b * (size * size - mx), 1e-6) * self.load


@dataclass
class Stretch:
    """Steps timed at one crop between two checks (per stretch: timing single steps would need a device sync
    per step)."""

    size: int
    steps: int
    seconds: float

    @property
    def pace(self) -> float:
        return self.seconds / self.steps


@dataclass
class Pace:
    """Every stretch and validation timed so far, and the costs a check plans with. A machine runs at its usual
    pace times a load that comes and goes (background work on a laptop or a shared node). A crop's usual step time
    is the median over its stretches weighted by their steps (one noisy stretch is outvoted by the rest: a check
    that once planned from the last stretch alone, 1.45 s per step against 0.39-0.63 s before it on a loaded 2-core
    machine, halved the plan and the run ended at 86 % of its budget); the rest of the run's steps are planned at
    that times the present load, the last quarter of the latest stretch's over it, when that is LOADED or more: a
    load that lasts is planned for at once, one that goes is outvoted at the next check. Validations, the BatchNorm
    recalibration and a new crop's warm-up scale with the machine's present pace over the probe's (the same crop's,
    through the probe's fit): the probe timed them at its own; a validation timed in training is taken at the
    slower pace of the stretches around it."""

    stretches: list[Stretch] = field(default_factory=list)
    vals: list[tuple[float, int]] = field(default_factory=list)  # seconds, and the index of the stretch before it

    def costs(self, probed: Costs, now: Stretch | None = None) -> Costs:
        crops = {r.size for r in self.stretches}
        usual = {z: _weighted_median([r for r in self.stretches if r.size == z]) for z in crops}
        scale = statistics.median(usual[z] / probed.step(z) for z in crops) if crops else 1.0  # probe -> usual
        step_s = {z: v * scale for z, v in probed.step_s.items()} | usual  # crops not trained yet: the probe's
        timed = dict(probed.timed) | {z: sum(r.steps for r in self.stretches if r.size == z) for z in crops}
        c = replace(probed, step_s=step_s, timed=timed, load=1.0)
        now = now or (self.stretches[-1] if self.stretches else None)
        pace = lambda r: r.pace / probed.step(r.size) if r is not None else 1.0  # noqa: E731 - in probe units
        val = statistics.median([probed.val_s] + [v / self._pace_around(i, pace) for v, i in self.vals])  # probe's
        c.val_s, c.recal_s, c.warm_s = (x * pace(now) for x in (val, probed.recal_s, probed.warm_s))
        load = now.pace / c.step(now.size) if now is not None else 1.0
        c.load = load if load > LOADED else 1.0
        return c

    def _pace_around(self, i: int, pace: Callable[[Stretch], float]) -> float:
        """The machine's pace during a validation: the slower of the stretches before (``i``) and after it. A load
        that began during the validation is not its own cost: priced at the quiet pace before it alone, a
        validation slowed 5x became five times dearer and was then slowed by the load again, and a simulated run
        (tests/test_budget.py) ended at 86 % of its budget."""
        around = [self.stretches[j] for j in (i, i + 1) if 0 <= j < len(self.stretches)]
        return max((pace(r) for r in around), default=1.0)


def _weighted_median(stretches: list[Stretch]) -> float:
    ordered = sorted(stretches, key=lambda r: r.pace)
    half, seen = sum(r.steps for r in ordered) / 2, 0
    for r in ordered:
        seen += r.steps
        if seen >= half:
            return r.pace
    return statistics.median(r.pace for r in ordered)


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
    sizes = epoch_sizes(d.train_end, d.res_start, d.res_ramp, spe, max(steps, 1))
    first = done // spe  # the epoch of step done+1
    if current is not None:
        if done % spe and first < len(sizes):  # mid-epoch: the epoch in progress keeps its crop
            sizes[first] = current
        sizes[first:] = rising(sizes[first:], current)
    return sizes


def cost(steps: int, spe: int, cfg: Config, c: Costs, done: int = 0, current: int | None = None) -> float:
    """Seconds for steps ``done``+1..``steps`` of a run of ``steps`` optimizer steps and every epoch end still to
    come, that of the epoch holding step ``done`` included (a check comes before its epoch's end: ``steps ==
    done`` ends the run there, at the price of that end). ``current``: the crop of step ``done``'s epoch."""
    if steps <= 0:
        return 0.0
    return _cost(steps, planned_sizes(cfg, spe, steps, done, current), spe, cfg, c, done)


def _cost(steps: int, sizes: list[int], spe: int, cfg: Config, c: Costs, done: int, warm: bool = True) -> float:
    """``cost`` with the crops given: the epochs' steps at their crops, one warm-up per crop not yet timed, per
    epoch started its fixed cost, per epoch end a checkpoint (plus train.checkpoint_every's) and the validations
    (train.eval_every's, and the last epoch's, with its BatchNorm recalibration)."""
    t, first = cfg.train, done // spe  # the epoch of step done+1
    price = {z: c.step(z) for z in set(sizes[first:])}  # (the fit once per crop, not once per epoch)
    train = sum(
        (min(spe, steps - e * spe) - max(0, done - e * spe)) * price[sizes[e]] for e in range(first, len(sizes))
    )
    new_sizes = len(set(sizes[first:]) - set(c.step_s)) if warm else 0
    pending = (done - 1) // spe + 1 if done else 1  # the 1-based number of the first epoch whose end is to come
    ends = range(pending, len(sizes) + 1)
    saves = len(ends) + (steps // t.checkpoint_every - done // t.checkpoint_every if t.checkpoint_every else 0)
    vals = sum(1 for e in ends if e == len(sizes) or (t.eval_every and e % t.eval_every == 0))
    started = len(sizes) - -(-done // spe)  # epochs not begun yet
    vals_s = (vals - 1 + c.last_val) * c.val_s  # the last epoch's end is always among them
    fixed = new_sizes * c.warm_s + vals_s + c.recal_s + started * c.epoch_s + saves * c.save_s
    return train + fixed  # (the last epoch's end recalibrates BatchNorm: recal_s, always to come)


def best_steps(left: float, spe: int, cfg: Config, c: Costs, done: int = 0, current: int | None = None) -> int:
    """The most steps whose ``cost`` from ``done`` fits in ``left`` seconds less the margin; ``done`` when no more
    fits (a run not begun: 0). Searched per number of epochs, longest first (module docstring): each is
    skipped at the price of one ``_cost`` when even its cheapest run (its fewest steps at its cheapest crops)
    does not fit."""
    left *= 1 - MARGIN
    d = cfg.data
    assert d.crop is not None
    price = {z: c.step(z) for z in allowed_sizes(d.train_end, d.res_start or d.train_end)}
    hi = _most_steps(
        max(left, 0.0), spe, done, min(price.values()), price[d.train_end], d.res_ramp[1] if d.res_start else 0.0
    )
    for epochs in range(-(-hi // spe), done // spe, -1):
        lo_s, hi_s = max(done + 1, (epochs - 1) * spe + 1), min(hi, epochs * spe)
        if lo_s > hi_s:
            continue
        # between these two every epoch's crop lies (it falls as the run lengthens); a step's cost is monotone
        # in its crop (a + b side^2), so the cheaper of the two per epoch bounds every run's from below
        fewest, most = (planned_sizes(cfg, spe, s, done, current) for s in (lo_s, hi_s))
        cheap = [a if price.get(a, 0.0) <= price.get(b, 0.0) else b for a, b in zip(fewest, most)]
        if _cost(lo_s, cheap, spe, cfg, c, done, warm=False) > left:
            continue
        found = _best_within(lo_s, hi_s, left, spe, cfg, c, done, current)
        if found is not None:
            return found
    return done


def _most_steps(left: float, spe: int, done: int, cheapest: float, last: float, ramp_end: float) -> int:
    """Steps beyond which no run fits in ``left``: every step costs at least ``cheapest``, and the epochs past
    the ramp's end (a share 1 - ``ramp_end`` of the run, less two epochs: the last one's rounding, and the one in
    progress, which keeps its crop) train at the last crop, at ``last`` per step."""
    s = done + left / cheapest
    extra, tail = last - cheapest, 1.0 - ramp_end
    if extra > 0 and tail * s - 2 * spe - done > 0:
        s = (left + cheapest * done + extra * (2 * spe + done)) / (cheapest + extra * tail)
    return int(s) + 1


def _best_within(lo: int, hi: int, left: float, spe: int, cfg: Config, c: Costs, done: int,
                 current: int | None) -> int | None:  # fmt: skip
    """The most steps in ``lo..hi`` (one number of epochs) that fit, or None: from the right, segment by segment
    of constant crops (every epoch's crop falls as the run lengthens, so a segment is an interval), bisected
    inside, where cost grows with steps."""
    sizes_of = lambda s: planned_sizes(cfg, spe, s, done, current)  # noqa: E731
    right = hi
    while right >= lo:
        sizes = sizes_of(right)
        a, b = lo, right  # the segment's first step: the smallest with right's crops
        while a < b:
            mid = (a + b) // 2
            a, b = (a, mid) if sizes_of(mid) == sizes else (mid + 1, b)
        if _cost(a, sizes, spe, cfg, c, done) <= left:
            a, b = a, right  # the most steps in the segment that fit
            while a < b:
                mid = (a + b + 1) // 2
                a, b = (mid, b) if _cost(mid, sizes, spe, cfg, c, done) <= left else (a, mid - 1)
            return a
        right = a - 1
    return None


def next_check(max_steps: int, sizes: list[int], spe: int, done: int, sync_every: int = 1,
               soon: bool = False) -> int | None:  # fmt: skip
    """The next mid-epoch check after step ``done`` in a plan of ``max_steps`` steps at these epoch crops: the
    first of CHECK_AT's shares of the plan, CHECK_GAP steps into an epoch at a crop no earlier epoch trained, or,
    ``soon`` (the machine runs loaded: confirm it), 4 steps (two sync steps) or 5 % of the rest on, whichever is
    more; moved to the next sync step (train.sync_every: the host reads the device only there), at least CHECK_GAP
    steps and two sync steps on (a stretch is timed between sync steps), not at an epoch's end (checked there
    anyway) nor at the run's. A new crop's time is the probe's until then, from three steps: off by 15 % once
    (2-core AVX2 CPU, 163 px: 1.38 s estimated, 1.62 s trained), and a 4-minute run whose last epoch, 38 steps at
    a new 163 px, began after the last share ended at 105 % of its budget."""
    at = [int(f * max_steps) for f in CHECK_AT]
    if CHECK_GAP < spe:
        at += [e * spe + CHECK_GAP for e in range(1, len(sizes)) if sizes[e] not in sizes[:e]]
    gap = max(CHECK_GAP, 2 * sync_every)
    up = lambda k: -(-k // sync_every) * sync_every  # noqa: E731 - the next sync step
    regular = [up(k) for k in at if up(k) >= done + gap]
    # a load: confirmed soon, up to the run's last steps (a plan it shortened is lengthened again once it goes)
    close = (
        [min(up(done + max(4, 2 * sync_every, math.ceil(0.05 * (max_steps - done)))), max_steps - 1)] if soon else []
    )
    close = [k for k in close if k >= done + 2 * sync_every]
    return min((k for k in regular + close if k % spe and k < max_steps), default=None)
