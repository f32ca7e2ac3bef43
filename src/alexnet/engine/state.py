"""The training state: what a run changes as it trains. ``TrainState.state_dict()`` is the checkpoint.

A checkpoint is a plain dict of tensors, numbers, strings and lists (loaded with ``weights_only=True``):
the unwrapped model's state_dict (the grouped single-device form, also for the two-tower split), the
optimizer, schedule and grad scaler, the position (epoch, step in epoch, global step), the best result,
the partial sums of an interrupted epoch, the RNG state, and the run's fixed facts (resolved config,
variant, class names, preprocessing, world size, training set). ``load_state_dict`` reads every version
written so far.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.preprocess import Preprocess
from ..io.checkpoint import FORMAT
from .ema import Ema
from .optim import Schedule


@dataclass
class EpochSums:
    """Training loss / accuracy sums of the current epoch so far (this rank's), and its seconds."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0

    def plus(self, loss: float, correct: float, count: float, seconds: float) -> EpochSums:
        return EpochSums(self.loss + loss, self.correct + correct, self.count + count, self.seconds + seconds)


@dataclass(frozen=True)
class RunInfo:
    """Facts fixed for a whole run, written into every checkpoint."""

    config: Config
    class_names: list[str]
    preprocess: Preprocess
    world_size: int
    train_set: str  # the training images' count and names' hash (data/loaders.py SplitData.identity)


def _no_best() -> dict[str, Any]:
    return {"val_top1": -1.0, "val_top5": 0.0, "epoch": 0}


@dataclass
class TrainState:
    model: nn.Module  # the raw model (never the DDP or compiled wrapper)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    info: RunInfo
    epoch: int = 0  # the epoch being trained, 0-based (= epochs finished, at an epoch boundary)
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=_no_best)
    partial: EpochSums = field(default_factory=EpochSums)
    ema: Ema | None = None  # train.ema: the averaged weights, validated and saved (as "ema") beside the model's

    def state_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "optimizer": self._optimizer_state(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "partial": asdict(self.partial),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
            "config": info.config.to_dict(),
            "variant": info.config.model.name,
            "class_names": list(info.class_names),
            "preprocess": info.preprocess.to_checkpoint(),
            "world_size": info.world_size,
            "train_set": info.train_set,
        }

    def _optimizer_state(self, saved: dict[str, Any] | None = None) -> dict[str, Any]:
        """Checkpoints hold the optimizer state in the grouped single-model form, as they hold the weights, so
        a run resumes with or without the two-tower split or hybrid sharding. ``saved``: convert a loaded
        state (0.1 wrote tower runs in tower form) for this model; None: this optimizer's state, for saving
        (a collective for hybrid runs)."""
        from ..models.towers import TowerAlexNet, is_tower_form, optimizer_state_to_grouped, optimizer_state_to_towers
        from ..parallel.hybrid import HybridAlexNet, optimizer_state_full, optimizer_state_shard

        model, norm = self.model, getattr(self.model, "norm", None)
        if saved is None:
            state = self.optimizer.state_dict()
            if isinstance(model, HybridAlexNet):
                return optimizer_state_full(model, state)
            return optimizer_state_to_grouped(state, model.norm) if isinstance(model, TowerAlexNet) else state
        if norm in ("lrn", "bn") and is_tower_form(saved, norm):
            saved = optimizer_state_to_grouped(saved, norm)
        if isinstance(model, TowerAlexNet):
            return optimizer_state_to_towers(saved, model.norm)
        return optimizer_state_shard(model, saved) if isinstance(model, HybridAlexNet) else saved

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        if self.ema is not None:  # a checkpoint without an average (train.ema turned on at resume): start it here
            self.ema.model.load_state_dict(ck.get("ema") or ck["model"])
        self.optimizer.load_state_dict(self._optimizer_state(ck["optimizer"]))
        self.schedule.load_state_dict(ck["schedule"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.best = dict(ck["best"])
        self.partial = EpochSums(**ck["partial"]) if ck.get("partial") else EpochSums()
        torch.set_rng_state(ck["rng"]["torch"])
        py = ck["rng"].get("python") or []
        if len(py) == len(random.getstate()[1]):  # a Mersenne Twister state (625 ints); else nothing to restore
            random.setstate((3, tuple(int(v) for v in py), None))
