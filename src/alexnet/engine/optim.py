"""Optimisers and learning-rate schedules.

``paper_sgd`` is the update rule as printed in the paper (§5):
    v <- 0.9 v - 0.0005 eps w - eps dL/dw ;  w <- w + v
PyTorch's SGD keeps v' = 0.9 v' + (dL/dw + 0.0005 w) and steps w <- w - eps v'. With a constant
eps the two are the same sequence (v = -eps v'); after eps drops, the paper's velocity still
carries the old eps for a while, torch's applies the new one at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig


class PaperSGD(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(mom).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, loss_scaled: bool = False) -> torch.optim.Optimizer:
    """One parameter group, everything decayed, as in the paper. ``loss_scaled``: fp16's GradScaler steps it."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "paper_sgd":
        return PaperSGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # fused kernels: measured 23 ms vs 139 ms (foreach) per SGD step for AlexNet's 61 M parameters on a
    # 2-core CPU (`python benchmarks/optimizer_step.py`); also available on CUDA.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)
    # Not fused under the GradScaler: fused SGD makes its momentum buffers with empty_like at its first step and
    # skips the step when the scaler found an overflow, which fp16's first steps usually have, leaving them
    # uninitialised (torch 2.14 on the 2-core AVX2 EPYC: 7.7e34 in one; the next step moved the weights by it).
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov, fused=fused and not loss_scaled)  # fmt: skip


def total_at(retargets: list[list[int]], step: int, default: int) -> int:
    """The run's length as planned at ``step``: the last --budget retarget [k, total] with k <= step
    (``ScheduleConfig.retargets``), else ``default``."""
    return next((t for k, t in reversed(retargets) if k <= step), default)


class Schedule:
    """One object for per-step (cosine, onecycle) and per-epoch (plateau, step) schedules.

    ``after_step()`` is called after every optimiser step, ``after_epoch(val_top1)`` after
    every validation. Its state goes into checkpoints.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        base_lr: float,
        epochs: int,
        steps_per_epoch: int,
        total_steps: int | None = None,
    ):
        """``total_steps`` (train.max_steps): the per-step schedules end there instead of after ``epochs``;
        ``cfg.retargets`` (a --budget run's re-plans) say where the run's length changed."""
        self.opt = optimizer
        self.cfg = cfg
        self.base_lr = base_lr
        self.total = max(1, total_steps or epochs * steps_per_epoch)
        self.warmup = int(cfg.warmup_epochs * steps_per_epoch)
        first_total = cfg.retargets[0][1] if cfg.retargets else self.total
        # onecycle without a warm-up ramps up over 30 % of the run as first planned
        self.up = self.warmup or (max(1, int(0.3 * first_total)) if cfg.name == "onecycle" else 0)
        self.step_count = 0
        self.drops = 0
        self.best: float | None = None
        self.bad_epochs = 0
        self.epoch = 0
        self._set(self._per_step_lr() if cfg.name in ("cosine", "onecycle") else base_lr)

    def _set(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def progress(self, s: int) -> float:
        """How far the decay after the warm-up is at step ``s``, 0 to 1. Each retarget [k, T] keeps the progress
        reached at step k and spreads the rest evenly over steps k..T: the lr goes on from where it was."""
        at, done, end = self.up, 0.0, total_at(self.cfg.retargets, self.up, self.total)
        for k, total in self.cfg.retargets:
            if self.up < k <= s:
                done += (1 - done) * (k - at) / max(1, end - at)
                at, end = k, total
        return min(1.0, max(0.0, done + (1 - done) * (s - at) / max(1, end - at)))

    def _per_step_lr(self) -> float:
        s, base = self.step_count, self.base_lr
        if s < self.up:  # linear warm-up
            return base * (0.1 + 0.9 * s / self.up) if self.cfg.name == "onecycle" else base * (s + 1) / self.up
        p = self.progress(s)
        if self.cfg.name == "onecycle":  # then linear down to 0
            return base * (1 - p)
        return self.cfg.min_lr + (base - self.cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * p))

    def retarget(self, total_steps: int) -> None:
        """End the per-step schedules at ``total_steps`` from this step on, the lr going on from where it is (a
        --budget plan's check, engine/budget.py); recorded in ``cfg.retargets``, which checkpoints carry."""
        if not self.cfg.retargets:
            self.cfg.retargets.append([0, self.total])
        if self.cfg.retargets[-1][0] == self.step_count:
            self.cfg.retargets.pop()
        self.cfg.retargets.append([self.step_count, max(1, total_steps)])
        self.total = max(1, total_steps)
        if self.cfg.name in ("cosine", "onecycle"):
            self._set(self._per_step_lr())

    def after_step(self) -> None:
        self.step_count += 1
        if self.cfg.name in ("cosine", "onecycle"):
            self._set(self._per_step_lr())

    def after_epoch(self, val_top1: float | None) -> bool:
        """Returns True when the lr was dropped."""
        self.epoch += 1
        name = self.cfg.name
        if name == "step":
            lr = self.base_lr * self.cfg.factor ** (self.epoch // self.cfg.step_size)
            dropped = lr < self.lr
            self._set(lr)
            return dropped
        if name != "plateau" or val_top1 is None:
            return False
        # paper §5: "divide the learning rate by 10 when the validation error rate stopped improving"
        if self.best is None or val_top1 > self.best:
            self.best, self.bad_epochs = val_top1, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience and self.drops < self.cfg.max_drops:
            self._set(self.lr * self.cfg.factor)
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        keys = ("step_count", "drops", "best", "bad_epochs", "epoch")
        return {k: getattr(self, k) for k in keys} | {"lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("step_count", "drops", "best", "bad_epochs", "epoch"):
            setattr(self, k, state[k])
        self._set(state["lr"])
