"""The training engine: one function, ``train``, from a resolved Config to a finished run directory.

Single process and torchrun/DDP take the same path (distributed.py). The run directory holds
config.yaml, metrics.jsonl, tensorboard/ and checkpoints/{last,best,step-N}.pt; rank 0 alone writes.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint as ckpt_io
from . import distributed, tuning
from .config import Config, save_yaml
from .data import keyed_random
from .data.loaders import DataBundle, build_data
from .errors import UserError
from .evaluate import autocast, evaluate
from .metrics import Progress, RunLogger
from .models import create_model
from .optim import Schedule, build_optimizer
from .rundir import StopFlag, check_run_dir, make_run_dir

log = logging.getLogger("alexnet")


class TrainingDiverged(UserError):
    pass


def model_options(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    opts: dict[str, Any] = {"dropout": m.dropout}
    if m.name == "alexnet":
        opts |= {"lrn_size": m.lrn_size, "lrn_alpha": m.lrn_alpha, "lrn_beta": m.lrn_beta, "lrn_k": m.lrn_k}
    return opts


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    m = cfg.model
    model = create_model(m.name, num_classes, init=m.init, weights=m.weights, **model_options(cfg))
    if m.freeze_features:
        for p in model.features.parameters():
            p.requires_grad_(False)
    return model


def to_towers(model: nn.Module, spec: str, dist: distributed.DistInfo) -> nn.Module:
    """The paper's two-device split. Not combined with DDP in this version: one process, two devices."""
    from .models.towers import TowerAlexNet

    if dist.enabled:
        raise UserError("--towers runs in one process on two devices; it is not combined with torchrun/DDP")
    devices = tuple(distributed.pick_device(d.strip()) for d in spec.split(","))
    if devices[0] != dist.device:
        raise UserError(f"with --towers the training device is tower A's: use --device {devices[0]} or auto")
    return TowerAlexNet.from_grouped(model, devices)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def train(
    cfg: Config, run_dir: Path, resume_from: dict[str, Any] | None = None, verbose: bool = True
) -> dict[str, Any]:
    dist = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, run_dir, resume_from, dist, verbose)
    finally:
        distributed.teardown()


def _train(
    cfg: Config, run_dir: Path, resume: dict[str, Any] | None, dist: distributed.DistInfo, verbose: bool
) -> dict[str, Any]:
    device = dist.device
    cfg.train = t_cfg = tuning.resolve(cfg.train, device)  # "auto" -> this device's measured fast path
    if cfg.data.path is not None:  # config.yaml is read again on resume, maybe from another directory
        cfg.data.path = str(Path(cfg.data.path).absolute())
    if t_cfg.amp == "fp16" and device.type == "cpu":
        raise UserError("train.amp=fp16 needs a GPU; use bf16 on the CPU")
    main = dist.is_main
    if main:
        check_run_dir(run_dir, resuming=resume is not None)
    torch.manual_seed(t_cfg.seed)
    random.seed(t_cfg.seed)
    if t_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data: DataBundle = build_data(cfg, dist.rank, dist.world, train=True, pin_memory=device.type == "cuda")
    if main:
        make_run_dir(run_dir)
    assert data.train is not None
    if data.skipped and main:
        log.warning("skipping %d unreadable files:\n  %s", len(data.skipped), "\n  ".join(data.skipped[:50]))
    num_classes = len(data.class_names)
    if resume is not None and resume["class_names"] != data.class_names:
        raise UserError("the data's classes differ from the checkpoint's; resume with the same --data")

    torch.manual_seed(t_cfg.seed)  # the init depends on the seed alone, not on what the data pipeline drew
    raw_model = build_model(cfg, num_classes).to(device)
    if t_cfg.towers:
        raw_model = to_towers(raw_model, t_cfg.towers, dist)
    if t_cfg.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    lr = cfg.optim.lr * (t_cfg.batch_size / cfg.optim.lr_scale_batch if cfg.optim.lr_scale_batch else 1.0)
    optimizer = build_optimizer(raw_model, cfg.optim, lr)
    steps_per_epoch = len(data.train)
    schedule = Schedule(optimizer, cfg.schedule, lr, t_cfg.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=t_cfg.amp == "fp16")

    start_epoch, start_batch, global_step = 0, 0, 0
    best = {"val_top1": -1.0, "val_top5": 0.0, "epoch": 0}
    partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
    if resume is not None:
        raw_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch, start_batch, global_step = resume["epoch"], resume["step_in_epoch"], resume["global_step"]
        best = resume["best"]
        partial = resume.get("partial") or partial
        torch.set_rng_state(resume["rng"]["torch"])
        if main:
            log.info("resuming at epoch %d, step %d (global step %d)", start_epoch + 1, start_batch, global_step)

    model: nn.Module = raw_model
    note = ""
    if t_cfg.compile is None:  # auto: only where its one-off cost is repaid within this run
        total = data.train.num_samples * t_cfg.epochs
        t_cfg.compile = tuning.compile_pays(device, tuning.has_lrn(raw_model), total, bool(t_cfg.towers))
        note = f" (auto, for {total:,} training images)"
    if main:
        log.info(
            "compute path: amp=%s channels_last=%s compile=%s%s", t_cfg.amp, t_cfg.channels_last, t_cfg.compile, note
        )
    if t_cfg.compile:
        model = torch.compile(model)
    eval_model = model
    if dist.enabled:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    logger = RunLogger(run_dir if main else None)
    if main:
        save_yaml(cfg, run_dir / "config.yaml")
        data.stats.save(run_dir / "stats.npz")
        log.info(
            "model %s (%s params), %d classes, %d train / %d val images, device %s, world %d",
            cfg.model.name,
            f"{sum(p.numel() for p in raw_model.parameters()):,}",
            num_classes,
            data.train.num_samples,
            data.val.num_samples,
            device,
            dist.world,
        )

    def make_checkpoint(epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "format": ckpt_io.FORMAT,
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best": dict(best),
            "partial": dict(partial),
            "rng": _rng_state(),
            "config": cfg.to_dict(),
            "variant": cfg.model.name,
            "class_names": data.class_names,
            "preprocess": preprocess_meta(cfg, data),
            "world_size": dist.world,
        }

    def save_step_checkpoint(epoch: int, step_in_epoch: int) -> Path:
        ck = make_checkpoint(epoch, step_in_epoch)
        return ckpt_io.publish(ck, run_dir / "checkpoints", global_step, ("last",), t_cfg.keep_last)

    norm_device_aug = data.augment
    norm_device_aug.normalizer = data.augment.normalizer.to(device)
    if t_cfg.channels_last:  # the augmentation writes the model's layout directly
        norm_device_aug.memory_format = torch.channels_last
    history: list[dict[str, Any]] = []
    with StopFlag() as stop:
        for epoch in range(start_epoch, t_cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.float64, device=device)
            count = torch.zeros((), dtype=torch.float64, device=device)
            unreadable = torch.zeros((), dtype=torch.int64, device=device)  # images that failed to decode
            bad_step = torch.zeros((), dtype=torch.int64, device=device)  # first step with a non-finite loss
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
            progress = Progress(
                steps_per_epoch, f"epoch {epoch + 1}/{t_cfg.epochs}", main and verbose, t_cfg.log_every, initial=first
            )
            step_in_epoch = first
            for x, y, idx in data.train.epoch(epoch, start_batch=first):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                idx = idx.to(device, non_blocking=True)
                x = norm_device_aug(x, keyed_random.keys(t_cfg.seed, epoch, idx))  # (B, 3, crop, crop)
                if t_cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                torch.manual_seed(t_cfg.seed * 1_000_003 + global_step * 101 + dist.rank)  # dropout masks
                with autocast(device, t_cfg.amp):
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
                # no host-device sync per step on GPUs: remember the first bad step on the device and look
                # at it every log_every steps (50 when 0) and before any checkpoint (on the CPU: every step, it
                # is free). A GPU H200 run measured 23k img/s with a check every step, a sync each time.
                # The same steps on every rank: NaNs and signals are agreed (all-reduced) there, so all ranks
                # stop together instead of one waiting forever in the next gradient all-reduce.
                bad_step = torch.where(torch.isfinite(loss) | (bad_step > 0), bad_step, global_step + 1)
                stop_signal = None
                save_due = t_cfg.checkpoint_every and (global_step + 1) % t_cfg.checkpoint_every == 0
                if (
                    device.type == "cpu"
                    or save_due
                    or (global_step + 1) % (t_cfg.log_every or 50) == 0
                    or step_in_epoch + 1 == steps_per_epoch
                ):
                    first_bad, stop_signal = distributed.agree_stop(bad_step, stop.signal)
                    check_finite(first_bad, epoch, run_dir)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.after_step()
                global_step += 1
                step_in_epoch += 1
                with torch.no_grad():
                    valid = (y >= 0).sum()
                    unreadable += y.numel() - valid
                    loss_sum += loss.detach().double() * valid
                    correct += (logits.argmax(1) == y).sum()
                    count += valid
                if main and t_cfg.log_every and global_step % t_cfg.log_every == 0:
                    logger.step(global_step, loss.item(), schedule.lr)
                progress.update(  # the callables run only when a line is shown (each .item() syncs a GPU)
                    loss=loss.item,
                    acc=lambda c=correct, n=count: c.item() / max(n.item(), 1.0),
                    img_s=lambda n=count, t=t0: n.item() * dist.world / max(time.perf_counter() - t, 1e-9),
                    lr=schedule.lr,
                )
                want_ckpt = t_cfg.checkpoint_every and global_step % t_cfg.checkpoint_every == 0
                if (want_ckpt or stop_signal is not None) and step_in_epoch < steps_per_epoch:
                    partial = _accumulate(partial, loss_sum, correct, count, time.perf_counter() - t0)
                    loss_sum.zero_(), correct.zero_(), count.zero_()
                    t0 = time.perf_counter()
                    if main:
                        path = save_step_checkpoint(epoch, step_in_epoch)
                    if stop_signal is not None:
                        progress.close()
                        if main:
                            log.info(
                                "stopped by signal %d at epoch %d step %d; checkpoint %s; resume with: "
                                "alexnet train --resume %s",
                                stop_signal,
                                epoch + 1,
                                step_in_epoch,
                                path,
                                run_dir,
                            )
                        logger.close()
                        return {"stopped": stop_signal, "run_dir": str(run_dir), "global_step": global_step}
            progress.close()
            if int(distributed.all_reduce_sum(unreadable)) and main:
                log.warning(
                    "epoch %d: skipped %d images that failed to decode (listed above)", epoch + 1, int(unreadable)
                )
            partial = _accumulate(partial, loss_sum, correct, count, time.perf_counter() - t0)
            t_eval = time.perf_counter()
            stats = torch.tensor(
                [partial["loss"], partial["correct"], partial["count"]], dtype=torch.float64, device=device
            )
            distributed.all_reduce_sum(stats)
            train_seconds = partial["seconds"]
            res = evaluate(
                eval_model,
                data.val,
                data.normalizer,
                data.crop,
                num_classes,
                device,
                t_cfg.eval_tta,
                t_cfg.amp,
                t_cfg.channels_last,
            )
            lr_used = schedule.lr
            schedule.after_epoch(res.top1)
            n_train = max(stats[2].item(), 1.0)
            row = {
                "epoch": epoch + 1,
                "lr": lr_used,
                "train_loss": stats[0].item() / n_train,
                "train_top1": stats[1].item() / n_train,
                "val_loss": res.loss,
                "val_top1": res.top1,
                "val_top5": res.top5,
                "val_n": res.n,
                "images_per_sec": stats[2].item() / max(train_seconds, 1e-9),
                "seconds": train_seconds + (time.perf_counter() - t_eval),  # training + validation
            }
            history.append(row)
            if res.top1 > best["val_top1"]:
                best = {"val_top1": res.top1, "val_top5": res.top5, "epoch": epoch + 1}
            partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
            if main:
                logger.epoch(row)
                log.info(
                    "epoch %d/%d  lr %.3g  train loss %.4f top-1 %.2f%%  val loss %.4f top-1 %.2f%% top-5 %.2f%%  %.0f img/s  %.1fs",
                    epoch + 1,
                    t_cfg.epochs,
                    lr_used,
                    row["train_loss"],
                    100 * row["train_top1"],
                    res.loss,
                    100 * res.top1,
                    100 * res.top5,
                    row["images_per_sec"],
                    row["seconds"],
                )
                names = ("last", "best") if best["epoch"] == epoch + 1 else ("last",)
                ckpt_io.publish(
                    make_checkpoint(epoch + 1, 0), run_dir / "checkpoints", global_step, names, t_cfg.keep_last
                )
            stop_signal = int(distributed.all_reduce_max(torch.tensor(stop.signal or 0, device=device))) or None
            if stop_signal is not None:
                if main:
                    log.info(
                        "stopped by signal %d after epoch %d; resume with: alexnet train --resume %s",
                        stop_signal,
                        epoch + 1,
                        run_dir,
                    )
                logger.close()
                return {"stopped": stop_signal, "run_dir": str(run_dir), "global_step": global_step}
    logger.close()
    if main:
        log.info(
            "best val top-1 %.2f%% top-5 %.2f%% (epoch %d); run directory: %s",
            100 * best["val_top1"],
            100 * best["val_top5"],
            best["epoch"],
            run_dir,
        )
    return {"stopped": False, "run_dir": str(run_dir), "best": best, "history": history, "global_step": global_step}


def check_finite(step: int, epoch: int, run_dir: Path) -> None:
    if step:
        good = ("checkpoints/last.pt is the last good checkpoint" if (run_dir / "checkpoints" / "last.pt").exists()
                else "no checkpoint was written yet")  # fmt: skip
        raise TrainingDiverged(f"loss became nan/inf at step {step} (epoch {epoch + 1}); {good}; "
                               "try a lower learning rate (--lr)")  # fmt: skip


def _accumulate(
    partial: dict[str, float], loss_sum: torch.Tensor, correct: torch.Tensor, count: torch.Tensor, seconds: float
) -> dict[str, float]:
    return {
        "loss": partial["loss"] + loss_sum.item(),
        "correct": partial["correct"] + correct.item(),
        "count": partial["count"] + count.item(),
        "seconds": partial["seconds"] + seconds,
    }


def preprocess_meta(cfg: Config, data: DataBundle) -> dict[str, Any]:
    """What predict/evaluate need to feed the network as it was trained."""
    n = data.normalizer
    return {
        "resize": data.resize,
        "crop": data.crop,
        "mean": n.mean.tolist(),
        "std": n.std.tolist(),
        "mean_image": None if n.mean_image is None else n.mean_image.cpu(),
        "builtin_digits": cfg.data.path is None,
    }
