"""Small building blocks shared by the AlexNet variants."""

from __future__ import annotations

import torch
from torch import nn


class GroupedLRN(nn.Module):
    """Local response normalisation applied separately inside each tower.

    In the paper each GPU normalises only its own feature maps (cuda-convnet ran the
    ``rnorm`` layer per GPU), so a kernel in tower A is never divided by activity in
    tower B. A single ``nn.LocalResponseNorm`` over all 96 channels would leak across
    the boundary at channels 47/48 and break the tower separation.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.lrn = nn.LocalResponseNorm(size=size, alpha=alpha, beta=beta, k=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return self.lrn(x)
        return torch.cat([self.lrn(t) for t in x.chunk(self.groups, dim=1)], dim=1)

    def extra_repr(self) -> str:
        lrn = self.lrn
        return f"size={lrn.size}, alpha={lrn.alpha}, beta={lrn.beta}, k={lrn.k}, groups={self.groups}"


def check_input_size(x: torch.Tensor, minimum: int, name: str) -> None:
    """Raise a ValueError naming the minimum when an input is too small for the network."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-d batch (B, 3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < minimum or w < minimum:
        raise ValueError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, got {h}x{w}")
