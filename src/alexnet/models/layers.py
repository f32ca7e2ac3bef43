"""Small building blocks shared by the AlexNet variants (LRN lives in lrn.py)."""

from __future__ import annotations

import torch
from torch import nn

from .. import keyed_random

DROPOUT_STREAMS = {"fc6": 106, "fc7": 107}  # keyed_random streams of the two dropout layers


def check_input_size(x: torch.Tensor, minimum: int, name: str) -> None:
    """Raise a ValueError naming the minimum when an input is too small for the network."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-d batch (B, 3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < minimum or w < minimum:
        raise ValueError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, got {h}x{w}")


class KeyedDropout(nn.Dropout):
    """Dropout whose mask for a sample depends only on that sample's key (seed, epoch, dataset index), the
    layer and the unit, not on which process or batch row holds the sample: 1 and N DDP processes (and the
    two-tower split, whose towers hold units ``offset ..``) train the same network. Training sets ``keys``
    per step (``set_dropout_keys``); without keys, e.g. a user's own loop, it is torch's dropout."""

    def __init__(self, p: float, stream: int, offset: int = 0) -> None:
        super().__init__(p)
        self.stream, self.offset = stream, offset
        self.keys: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.keys is None or self.keys.shape[0] != x.shape[0]:
            return super().forward(x)
        return keyed_dropout(x, self.p, self.keys, self.stream, self.offset)


def keyed_dropout(x: torch.Tensor, p: float, keys: torch.Tensor, stream: int, offset: int = 0) -> torch.Tensor:
    """Dropout of (B, n) ``x`` with sample ``i``'s mask of units ``offset .. offset + n`` drawn from ``keys[i]``."""
    keep = keyed_random.uniform_grid(keys.to(x.device), stream, x.shape[1], offset) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p)) if p < 1 else x * 0


def set_dropout_keys(model: nn.Module, keys: torch.Tensor | None) -> None:
    """The per-sample keys of the batch the next forward pass sees (None: torch's own dropout)."""
    for m in model.modules():
        if isinstance(m, KeyedDropout):
            m.keys = keys
