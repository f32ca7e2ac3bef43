"""Small building blocks shared by the AlexNet variants (LRN lives in lrn.py)."""

from __future__ import annotations

import torch


def check_input_size(x: torch.Tensor, minimum: int, name: str) -> None:
    """Raise a ValueError naming the minimum when an input is too small for the network."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-d batch (B, 3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < minimum or w < minimum:
        raise ValueError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, got {h}x{w}")
