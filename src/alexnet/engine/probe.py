"""The --budget run's probe (engine/budget.py): what a training step at each crop, a validation and a checkpoint
cost on this machine, measured before the first real step, the state restored after."""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..data.transforms import TTA
from ..inference import evaluate
from ..io import checkpoint as ckpt_io
from ..parallel import distributed
from .epoch import batch_draws, forward
from .planner import Costs
from .precise_bn import recalibration_images
from .setup import Session
from .state import TrainState


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
    k, recal, t = len(sizes), recalibration_images(s, st.model), s.cfg.train
    views = lambda tta: len(TTA[tta](torch.zeros(1, 1, 2, 2), 1))  # noqa: E731 - a view costs a forward pass
    return Costs(dict(zip(sizes, agreed[:k])), agreed[k], agreed[k + 1], agreed[k + 2], agreed[k + 3],
                 dict.fromkeys(sizes, timed), agreed[k + 2] * recal / max(s.data.val.num_samples, 1),
                 last_val=views(t.final_tta or t.eval_tta) / views(t.eval_tta))  # fmt: skip


def _time_steps(s: Session, st: TrainState, size: int, warm: int, timed: int) -> tuple[float, float]:
    """(the first step's seconds, the median of the ``timed`` steps after ``warm`` warm-up steps) at ``size``;
    real batches of epoch 0 through the run's own augmentation, forward, backward and optimizer step."""
    assert s.data.train is not None
    draws = batch_draws(s, 0)  # the epoch's order and draws, before the clock starts: an epoch's cost, not a step's
    times, t0 = [], time.perf_counter()
    for i, (x, y, idx) in enumerate(itertools.islice(s.data.train.epoch(0, size=size), warm + timed)):
        loss, _, _ = forward(s, st, x, y, idx, size, draws=draws(i))
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
        if st.ema is not None:
            st.ema.update(st.model, 0.5)
        distributed.synchronize(s.device)
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
             s.device, t.eval_tta, t.amp, bool(t.channels_last))  # fmt: skip
    distributed.synchronize(s.device)
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
