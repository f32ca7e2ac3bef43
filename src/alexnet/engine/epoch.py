"""One epoch of training steps (``train_one_epoch``), and what follows it (``end_of_epoch``: validation, the
metrics row, checkpoints).

The host reads values from the device (the loss, the sums, the NaN and stop flags) only at sync steps
(``is_sync_step``: every train.sync_every steps, checkpoint steps and an epoch's last step): on a GPU each read
waits for the queue to drain, so between sync steps the host only queues work. Nothing per step grows with the
dataset (``Batches.__len__`` is arithmetic; an epoch's order is drawn once, on a thread while the epoch before
trains).

Rule for DDP: every rank must reach the same sync steps (``is_sync_step`` depends only on counters all
ranks share). NaNs and stop signals are agreed there with an all-reduce, so all ranks stop at the same step
instead of one waiting forever in the next gradient all-reduce.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import keyed_random
from ..data.resolution import epoch_size_at
from ..errors import UserError
from ..inference import autocast, evaluate
from ..io import checkpoint as ckpt_io
from ..models.layers import set_dropout_keys
from ..parallel import distributed
from ..parallel.hybrid import HybridAlexNet, assemble
from . import precise_bn
from .ema import decay_for
from .optim import total_at
from .progress import Progress
from .setup import Session
from .signals import StopFlag
from .state import EpochSums, TrainState

log = logging.getLogger("alexnet")


class TrainingDiverged(UserError):
    pass


@dataclass
class StepSums:
    """This epoch's sums since the last drain. Between sync steps each step's loss and number of right answers
    stay on the device as the step left them (no op adds them up: on a GPU a step's host time is its ops'
    launches); a sync step reads them all at once (``read``, one read of the device) and sums them on the host.
    The image counts are host numbers throughout (the labels are there before they are copied)."""

    pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = field(default_factory=list)  # step, loss, right, n
    loss: float = 0.0  # over the steps read: the sum of each loss times its images
    correct: float = 0.0
    count: int = 0
    unreadable: int = 0  # images that failed to decode
    first_bad: int = 0  # first step with a non-finite loss (0: none)
    last_loss: float = math.nan  # the loss of the last step read

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, step: int, valid: int) -> None:
        """Step ``step``'s loss and predictions over its ``valid`` decoded images (three ops on the device)."""
        with torch.no_grad():
            self.pending.append((step, loss.detach(), (logits.argmax(1) == y).sum(), valid))
        self.unreadable += y.numel() - valid

    def read(self) -> None:
        """The pending steps' values into the host sums, in one read of the device; notes the first non-finite
        loss. Right answers per step are exact in float32 (at most a batch)."""
        if not self.pending:
            return
        steps, losses, rights, images = zip(*self.pending)
        n, self.pending = len(steps), []
        values = torch.cat([torch.stack(losses).float(), torch.stack(rights).float()]).tolist()
        for step, loss, right, valid in zip(steps, values[:n], values[n:], images):
            if not (self.first_bad or math.isfinite(loss)):
                self.first_bad = step
            self.loss, self.correct, self.count = self.loss + loss * valid, self.correct + right, self.count + valid
        self.last_loss = values[n - 1]

    def drain(self, into: EpochSums, seconds: float) -> EpochSums:
        """Move the sums into ``into`` and start again from zero."""
        self.read()
        out = into.plus(self.loss, self.correct, float(self.count), seconds)
        self.loss, self.correct, self.count = 0.0, 0.0, 0
        return out


def is_sync_step(s: Session, st: TrainState) -> bool:
    """Whether the host reads device values after the step just taken (global step ``st.global_step``): every
    train.sync_every steps (tuning.auto_sync_every: every step on CPUs), at checkpoint steps, at the epoch's last
    step and at the run's last. A read waits for the GPU; between sync steps nothing reads one. Depends only on
    counters every rank shares (see the module docstring)."""
    t, k = s.cfg.train, st.global_step
    return (k % (t.sync_every or 1) == 0 or bool(t.checkpoint_every and k % t.checkpoint_every == 0)
            or st.step_in_epoch == steps_per_epoch(s) or k == total_steps(s))  # fmt: skip


def check_finite(step: int, epoch: int, run_dir: Path) -> None:
    if step:
        good = ("checkpoints/last.pt is the last good checkpoint" if (run_dir / "checkpoints" / "last.pt").exists()
                else "no checkpoint was written yet")  # fmt: skip
        raise TrainingDiverged(f"loss became nan/inf at step {step} (epoch {epoch + 1}); {good}; "
                               "try a lower learning rate (--lr)")  # fmt: skip


def steps_per_epoch(s: Session) -> int:
    """Optimizer steps in a whole epoch (the same on every rank: training pads to a multiple of the world size)."""
    assert s.data.train is not None
    return len(s.data.train)


def total_steps(s: Session) -> int:
    """The run's length in optimizer steps: train.max_steps (a --budget plan's), else every step of every epoch."""
    return s.cfg.train.max_steps or s.cfg.train.epochs * steps_per_epoch(s)


def finished(s: Session, st: TrainState) -> bool:
    return st.epoch >= s.cfg.train.epochs or st.global_step >= total_steps(s)


def epoch_size(s: Session, epoch: int) -> int:
    """This epoch's training crop (progressive resizing, data/resolution.py; the final crop when off), from the
    run's length as planned when the epoch began (a --budget check changes the crops of later epochs only), and
    never below an earlier epoch's crop (a check that lengthens the run moves the ramp later)."""
    d = s.cfg.data
    if d.res_start is None or d.res_start >= d.train_end:
        return d.train_end
    spe, retargets, total = steps_per_epoch(s), s.cfg.schedule.retargets, total_steps(s)

    def planned(e: int) -> int:  # epoch e's crop under the plan in force when it began
        return epoch_size_at(e, d.train_end, d.res_start, d.res_ramp, spe, total_at(retargets, e * spe, total))

    return max(planned(e) for e in range(epoch + 1))


def forward(s: Session, st: TrainState, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
            size: int | None = None, valid: int | None = None, draws: keyed_random.Draws | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Augment on the device (keyed by seed, epoch and sample index; ``draws``: the batch's rows of the epoch's
    draws, on the device, else drawn here from ``idx``) to ``size`` px (default: the crop), run the model on a host
    batch of ``valid`` decoded images (counted here when None); (loss, logits, device labels)."""
    t, dev, valid = s.cfg.train, s.device, decoded(y) if valid is None else valid
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    # per sample: augmentation and dropout masks
    keyed = keyed_random.keys(t.seed, st.epoch, idx.to(dev, non_blocking=True)) if draws is None else draws
    x = s.augment(x, keyed, size)  # (B, 3, size, size)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_dropout_keys(st.model, keyed.key if isinstance(keyed, keyed_random.Draws) else keyed)
    with autocast(dev, t.amp):
        logits = s.model(x)
        # the mean over the images that decoded (label -100: failed); 0, not NaN, when none did
        loss = F.cross_entropy(logits.float(), y, label_smoothing=s.cfg.optim.label_smoothing, reduction="sum")
        loss = loss / max(valid, 1)
    return loss, logits, y


def batch_draws(s: Session, epoch: int) -> Callable[[int], keyed_random.Draws | None]:
    """``draws(i)``: batch ``i``'s rows of ``epoch``'s augmentation draws (taken with the epoch's order, copied to
    the device here, once), or None for a source without them (drawn from the indices then, each step)."""
    assert s.data.train is not None
    train, drawn = s.data.train, s.data.train.epoch_draws(epoch)
    if drawn is None:
        return lambda i: None
    drawn = drawn.to(s.device)
    return lambda i: drawn.rows(train.span(i))


def decoded(y: torch.Tensor) -> int:
    """Images of a host batch that decoded (label -100: failed), counted on the host: no device work."""
    return int((y >= 0).sum())


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
                    after_sync: Callable[[int], None] | None = None) -> int | None:  # fmt: skip
    """Train epoch ``st.epoch`` from step ``st.step_in_epoch`` to its end (the run's end when that comes first,
    as planned at each step: a --budget check may move it), or to global step ``until`` (call again to go on).
    ``after_sync(global_step)`` is called at each sync step (a --budget run's clock and checks: the host has just
    waited for the device there). Returns the agreed stop signal when one arrived (a checkpoint was saved at that
    step), else None with ``st.partial`` holding the epoch's sums."""
    t, size, start = s.cfg.train, epoch_size(s, st.epoch), st.global_step - st.step_in_epoch
    steps = lambda: min(steps_per_epoch(s), total_steps(s) - start)  # noqa: E731 - this epoch's, as planned now
    done = lambda: st.step_in_epoch >= steps() or (until is not None and st.global_step >= until)  # noqa: E731
    if st.step_in_epoch == 0:
        st.partial = EpochSums()
    sums, t0 = StepSums(), time.perf_counter()
    label = f"epoch {st.epoch + 1}/{t.epochs}" + (
        f" {size}px" if s.cfg.data.res_start or size != s.cfg.data.crop else ""
    )
    progress = Progress(steps(), label, s.main and s.verbose, t.log_every, initial=st.step_in_epoch)
    shown = Shown(st.global_step)
    s.model.train()
    assert s.data.train is not None
    ahead = start + steps_per_epoch(s) < total_steps(s)  # another epoch follows: its order is drawn meanwhile
    batches = s.data.train.epoch(st.epoch, st.step_in_epoch, size, ahead) if not done() else iter(())
    draws = batch_draws(s, st.epoch) if not done() else (lambda i: None)
    for x, y, idx in batches:
        valid = decoded(y)  # y is still on the host: no sync
        update = s.dist.enabled or valid > 0
        loss, logits, y = forward(s, st, x, y, idx, size, valid, draws(st.step_in_epoch))
        optimizer_step(st, loss, update)
        if st.ema is not None and update:
            st.ema.update(st.model, decay_for(t.ema, total_steps(s)))
        sums.add(loss, logits, y, st.global_step, valid)
        progress.advance()
        if is_sync_step(s, st):
            signal = sync_point(s, st, stop, sums, progress, shown, t0)
            if after_sync is not None:
                after_sync(st.global_step)
                progress.set_total(steps())  # a --budget check may have planned the run again
            want_ckpt = t.checkpoint_every and st.global_step % t.checkpoint_every == 0
            if (want_ckpt or signal is not None) and st.step_in_epoch < steps():
                st.partial, t0 = sums.drain(st.partial, time.perf_counter() - t0), time.perf_counter()
                save(s, st, ("last",))
                if signal is not None:
                    progress.close()
                    return signal
        if done():
            break
    getattr(batches, "close", lambda: None)()  # a loader left mid-epoch stops its workers and threads now
    progress.close()
    unreadable = int(distributed.all_reduce_sum(torch.tensor(sums.unreadable, device=s.device)))
    if unreadable and s.main:
        log.warning("epoch %d: skipped %d images that failed to decode (listed above)", st.epoch + 1, unreadable)
    st.partial = sums.drain(st.partial, time.perf_counter() - t0)
    return None


@dataclass
class Shown:
    """The global step whose loss was last shown (TensorBoard's step scalars, every train.log_every steps)."""

    step: int


def sync_point(s: Session, st: TrainState, stop: StopFlag, sums: StepSums, progress: Progress, shown: Shown,
               t0: float) -> int | None:  # fmt: skip
    """Where the host reads the device (a sync step): the steps' sums (one read), the ranks' agreement on NaNs and
    stop signals (under DDP one more), then the progress bar, log line and step scalars that are due, from host
    numbers. Returns the signal."""
    sums.read()
    first_bad, signal = distributed.agree_stop(sums.first_bad, stop.signal, s.device)
    check_finite(first_bad, st.epoch, s.run_dir)
    every, k = s.cfg.train.log_every, st.global_step
    scalars = s.main and every > 0 and k // every > shown.step // every
    if scalars:
        s.logger.step(k, sums.last_loss, st.schedule.lr)
        shown.step = k
    if progress.due():
        seconds = max(time.perf_counter() - t0, 1e-9)
        progress.show(loss=sums.last_loss, acc=sums.correct / max(sums.count, 1),
                      img_s=sums.count * s.dist.world / seconds, lr=st.schedule.lr)  # fmt: skip
    return signal


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
                       s.device, (t.final_tta or t.eval_tta) if last else t.eval_tta, t.amp, bool(t.channels_last))  # fmt: skip
    lr_used = st.schedule.lr
    st.schedule.after_epoch(res.top1 if res else None)
    n_train = max(totals[2], 1.0)
    row = {"epoch": st.epoch + 1, "lr": lr_used, "train_loss": totals[0] / n_train, "train_top1": totals[1] / n_train}
    if res is not None:
        row |= {"val_loss": res.loss, "val_top1": res.top1, "val_top5": res.top5, "val_n": res.n, "val_tta": res.tta}
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
    """The checkpoint of an epoch's end: last.pt, and best.pt when this epoch is the best so far. When the run's
    first save fails (a full disk), the rows written before it go too: with no checkpoint to resume from, the
    same command starts the run again, which a metrics.jsonl left behind would refuse as a run to keep."""
    first = s.main and not any((s.run_dir / "checkpoints").glob("*.pt"))
    try:
        save(s, st, ("last", "best") if st.best["epoch"] == st.epoch else ("last",))
    except BaseException:
        if first:
            (s.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        raise
