"""An exponential moving average of the weights (``train.ema``), evaluated and saved in their place.

The average covers parameters and floating-point buffers (BatchNorm's running statistics, as timm's
``ModelEmaV3`` does); integer buffers are copied. Its decay is set by a half-life given as a fraction of the
run's optimizer steps, so the same recipe value averages over the same share of a 4-minute and a 4-hour run
(a per-step decay such as 0.999 is a 693-step half-life: longer than a whole 8-minute CPU run).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def decay_for(half_life: float, total_steps: int) -> float:
    """The per-step decay whose half-life is ``half_life`` x ``total_steps`` steps (at least one step)."""
    return 0.5 ** (1.0 / max(1.0, half_life * total_steps))


class Ema:
    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """avg <- decay * avg + (1 - decay) * weights (one fused foreach lerp over the float tensors)."""
        mine = itertools.chain(self.model.parameters(), self.model.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        pairs = list(zip(mine, theirs, strict=True))
        floats = [(a, b.detach()) for a, b in pairs if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1.0 - decay)
        for a, b in pairs:
            if not a.is_floating_point():
                a.copy_(b)
