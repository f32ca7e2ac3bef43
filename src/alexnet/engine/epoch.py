"""One epoch of training steps (``train_one_epoch``), and what follows it (``end_of_epoch``: validation, the
metrics row, checkpoints).

Rule for DDP: every rank must reach the same check steps (``is_check_step`` depends only on counters all
ranks share). NaNs and stop signals are agreed there with an all-reduce, so all ranks stop at the same step
instead of one waiting forever in the next gradient all-reduce.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt_io
from .. import distributed, keyed_random
from ..data.resolution import epoch_sizes
from ..errors import UserError
from ..hybrid import HybridAlexNet, assemble
from ..inference import autocast, evaluate
from ..models.layers import set_dropout_keys
from ..optim import total_at
from ..progress import Progress
from ..signals import StopFlag
from . import precise_bn
from .ema import decay_for
from .setup import Session
from .state import EpochSums, TrainState

log = logging.getLogger("alexnet")


class TrainingDiverged(UserError):
    pass


@dataclass
class StepSums:
    """This epoch's running sums on the device (no host sync per step)."""

    loss: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor
    unreadable: torch.Tensor  # images that failed to decode
    bad_step: torch.Tensor  # first step with a non-finite loss (0: none)

    @classmethod
    def zeros(cls, device: torch.device) -> StepSums:
        f = lambda dt: torch.zeros((), dtype=dt, device=device)  # noqa: E731
        return cls(f(torch.float32), f(torch.int64), f(torch.int64), f(torch.int64), f(torch.int64))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            valid = (y >= 0).sum()
            self.unreadable += y.numel() - valid
            self.loss += loss.detach().float() * valid
            self.correct += (logits.argmax(1) == y).sum()
            self.count += valid

    def drain(self, into: EpochSums, seconds: float) -> EpochSums:
        """Move the sums into ``into`` (host floats) and start again from zero."""
        out = into.plus(self.loss.item(), self.correct.item(), self.count.item(), seconds)
        for t in (self.loss, self.correct, self.count):
            t.zero_()
        return out


def is_check_step(s: Session, st: TrainState) -> bool:
    """Where NaNs and signals are looked at (a host-device sync on GPUs): every step on CPUs (free), else every
    log_every steps (50 when 0), at checkpoint steps and at the epoch's last step. One H200 run measured 23k img/s
    with a check (a sync) every step. Depends only on counters every rank shares (see the module docstring)."""
    t = s.cfg.train
    step = st.global_step + 1
    return (s.device.type == "cpu" or bool(t.checkpoint_every and step % t.checkpoint_every == 0)
            or step % (t.log_every or 50) == 0 or st.step_in_epoch + 1 == len(s.data.train or [])
            or step == total_steps(s))  # fmt: skip


def check_finite(step: int, epoch: int, run_dir: Path) -> None:
    if step:
        good = ("checkpoints/last.pt is the last good checkpoint" if (run_dir / "checkpoints" / "last.pt").exists()
                else "no checkpoint was written yet")  # fmt: skip
        raise TrainingDiverged(f"loss became nan/inf at step {step} (epoch {epoch + 1}); {good}; "
                               "try a lower learning rate (--lr)")  # fmt: skip


def total_steps(s: Session) -> int:
    """The run's length in optimizer steps: train.max_steps (a --budget plan's), else every step of every epoch."""
    return s.cfg.train.max_steps or s.cfg.train.epochs * len(s.data.train or [])


def finished(s: Session, st: TrainState) -> bool:
    return st.epoch >= s.cfg.train.epochs or st.global_step >= total_steps(s)


def epoch_size(s: Session, epoch: int) -> int:
    """This epoch's training crop (progressive resizing, data/resolution.py; the final crop when off), from the
    run's length as planned when the epoch began (a --budget check changes the crops of later epochs only), and
    never below an earlier epoch's crop (a check that lengthens the run moves the ramp later)."""
    d, spe, retargets, total = s.cfg.data, len(s.data.train or [1]), s.cfg.schedule.retargets, total_steps(s)

    def planned(e: int) -> int:  # epoch e's crop under the plan in force when it began
        sizes = epoch_sizes(d.train_end, d.res_start, d.res_ramp, spe, total_at(retargets, e * spe, total))
        return sizes[min(e, len(sizes) - 1)]

    return max(planned(e) for e in range(epoch + 1))


def forward(s: Session, st: TrainState, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
            size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Augment on the device (keyed by seed, epoch and sample index) to ``size`` px (default: the crop), run the
    model; (loss, logits, labels)."""
    t, dev = s.cfg.train, s.device
    x, y, idx = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), idx.to(dev, non_blocking=True)
    keys = keyed_random.keys(t.seed, st.epoch, idx)  # per sample: augmentation and dropout masks
    x = s.augment(x, keys, size)  # (B, 3, size, size)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_dropout_keys(st.model, keys)
    with autocast(dev, t.amp):
        logits = s.model(x)
        # the mean over the images that decoded (label -100: failed); 0, not NaN, when none did
        loss = F.cross_entropy(logits.float(), y, label_smoothing=s.cfg.optim.label_smoothing, reduction="sum")
        loss = loss / (y >= 0).sum().clamp(min=1)
    return loss, logits, y


def optimizer_step(st: TrainState, loss: torch.Tensor, update: bool = True) -> None:
    """Backward and step; ``update=False`` (a batch with no decodable image, one process) only advances the
    counters and the schedule, so weights, momentum and weight decay are untouched. Under DDP every rank
    steps (a rank without images contributes zero gradients): ranks must not diverge."""
    st.optimizer.zero_grad(set_to_none=True)
    if update:
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
    st.schedule.after_step()
    st.global_step += 1
    st.step_in_epoch += 1


def save(s: Session, st: TrainState, names: tuple[str, ...]) -> None:
    """Every rank calls this (a hybrid run's state_dict gathers its shards); rank 0 writes. Under DDP the
    checkpoint holds the epoch's partial sums over all ranks (each rank has its own); on resume rank 0 takes
    them and the others start from zero (engine/setup.py), so no rank's share is lost or counted twice."""
    ck = st.state_dict()
    if s.dist.enabled:
        p = st.partial
        total = distributed.all_reduce_sum(torch.tensor([p.loss, p.correct, p.count], device=s.device)).tolist()
        ck["partial"] = {"loss": total[0], "correct": total[1], "count": total[2], "seconds": p.seconds}
    if s.main:
        ckpt_io.publish(ck, s.run_dir / "checkpoints", st.global_step, names, s.cfg.train.keep_last)


def train_one_epoch(s: Session, st: TrainState, stop: StopFlag, until: int | None = None,
                    after_step: Callable[[int], None] | None = None) -> int | None:  # fmt: skip
    """Train epoch ``st.epoch`` from step ``st.step_in_epoch`` to its end, or to global step ``until`` when that
    comes first (a --budget check; call again to go on); ``after_step(global_step)`` is called after each step
    (the budget's clock). Returns the agreed stop signal when one arrived (a checkpoint was saved at that step),
    else None with ``st.partial`` holding the epoch's sums."""
    t, size = s.cfg.train, epoch_size(s, st.epoch)
    n_steps = min(len(s.data.train or []), total_steps(s) - (st.global_step - st.step_in_epoch))  # last may be partial
    pause = n_steps if until is None else min(n_steps, until - (st.global_step - st.step_in_epoch))
    if st.step_in_epoch == 0:
        st.partial = EpochSums()
    sums, t0 = StepSums.zeros(s.device), time.perf_counter()
    label = f"epoch {st.epoch + 1}/{t.epochs}" + (
        f" {size}px" if s.cfg.data.res_start or size != s.cfg.data.crop else ""
    )
    progress = Progress(n_steps, label, s.main and s.verbose, t.log_every, initial=st.step_in_epoch)
    s.model.train()
    assert s.data.train is not None
    batches = s.data.train.epoch(st.epoch, start_batch=st.step_in_epoch, size=size)
    for x, y, idx in itertools.islice(batches, max(0, pause - st.step_in_epoch)):
        update = s.dist.enabled or bool((y >= 0).any())  # y is still on the host: no sync
        loss, logits, y = forward(s, st, x, y, idx, size)
        sums.bad_step = torch.where(torch.isfinite(loss) | (sums.bad_step > 0), sums.bad_step, st.global_step + 1)
        signal = None
        if is_check_step(s, st):
            first_bad, signal = distributed.agree_stop(sums.bad_step, stop.signal)
            check_finite(first_bad, st.epoch, s.run_dir)
        optimizer_step(st, loss, update)
        if st.ema is not None and update:
            st.ema.update(st.model, decay_for(t.ema, total_steps(s)))
        sums.add(loss, logits, y)
        if after_step is not None:
            after_step(st.global_step)
        if s.main and t.log_every and st.global_step % t.log_every == 0:
            s.logger.step(st.global_step, loss.item(), st.schedule.lr)
        progress.update(  # the callables run only when a line is shown (each .item() syncs a GPU)
            loss=loss.item, acc=lambda c=sums.correct, n=sums.count: c.item() / max(n.item(), 1.0),
            img_s=lambda n=sums.count, t0=t0: n.item() * s.dist.world / max(time.perf_counter() - t0, 1e-9),
            lr=st.schedule.lr)  # fmt: skip
        want_ckpt = t.checkpoint_every and st.global_step % t.checkpoint_every == 0
        if (want_ckpt or signal is not None) and st.step_in_epoch < n_steps:
            st.partial, t0 = sums.drain(st.partial, time.perf_counter() - t0), time.perf_counter()
            save(s, st, ("last",))
            if signal is not None:
                progress.close()
                return signal
    progress.close()
    if int(distributed.all_reduce_sum(sums.unreadable)) and s.main:
        log.warning("epoch %d: skipped %d images that failed to decode (listed above)", st.epoch + 1,
                    int(sums.unreadable))  # fmt: skip
    st.partial = sums.drain(st.partial, time.perf_counter() - t0)
    return None


def end_of_epoch(s: Session, st: TrainState) -> dict[str, Any]:
    """Validate (every train.eval_every epochs and after the last), step the schedule, write the metrics row
    and the checkpoints; returns the row (without val_* when this epoch was not validated)."""
    t, t_eval = s.cfg.train, time.perf_counter()
    p = st.partial
    totals = distributed.all_reduce_sum(torch.tensor([p.loss, p.correct, p.count], dtype=torch.float32,
                                                     device=s.device)).tolist()  # fmt: skip
    last = st.epoch + 1 >= t.epochs or st.global_step >= total_steps(s)
    res = None
    if last or (t.eval_every and (st.epoch + 1) % t.eval_every == 0):
        if last:
            precise_bn.recalibrate(s, st.ema.model if st.ema is not None else st.model)
        if isinstance(st.model, HybridAlexNet):
            assemble(st.model, getattr(s.eval_model, "_orig_mod", s.eval_model))
        model = st.ema.model if st.ema is not None else s.eval_model
        res = evaluate(model, s.data.val, s.data.normalizer, s.data.preprocess.crop, len(s.data.class_names),
                       s.device, t.eval_tta, t.amp, t.channels_last)  # fmt: skip
    lr_used = st.schedule.lr
    st.schedule.after_epoch(res.top1 if res else None)
    n_train = max(totals[2], 1.0)
    row = {"epoch": st.epoch + 1, "lr": lr_used, "train_loss": totals[0] / n_train, "train_top1": totals[1] / n_train}
    if res is not None:
        row |= {"val_loss": res.loss, "val_top1": res.top1, "val_top5": res.top5, "val_n": res.n}
    row |= {"images_per_sec": totals[2] / max(p.seconds, 1e-9), "train_size": epoch_size(s, st.epoch),
            "seconds": p.seconds + (time.perf_counter() - t_eval)}  # fmt: skip
    if res is not None and res.top1 > st.best["val_top1"]:
        st.best = {"val_top1": res.top1, "val_top5": res.top5, "epoch": st.epoch + 1}
    st.epoch, st.step_in_epoch, st.partial = st.epoch + 1, 0, EpochSums()
    if s.main:
        s.logger.epoch(row, st.global_step)
        val = (f"val loss {res.loss:.4f} top-1 {100 * res.top1:.2f}% top-5 {100 * res.top5:.2f}%" if res
               else "not validated (train.eval_every)")  # fmt: skip
        log.info("epoch %d/%d  lr %.3g  train loss %.4f top-1 %.2f%%  %s  %.0f img/s  %.1fs", row["epoch"], t.epochs,
                 lr_used, row["train_loss"], 100 * row["train_top1"], val, row["images_per_sec"], row["seconds"])  # fmt: skip
    save_epoch(s, st)
    return row


def save_epoch(s: Session, st: TrainState) -> None:
    """The checkpoint of an epoch's end: last.pt, and best.pt when this epoch is the best so far."""
    save(s, st, ("last", "best") if st.best["epoch"] == st.epoch else ("last",))
