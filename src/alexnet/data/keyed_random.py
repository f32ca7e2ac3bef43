"""Counter-based random numbers: a sample's augmentation depends only on (seed, epoch, index).

So a run gives the same result whatever the batch composition, the number of data-loader
workers or DDP ranks, and wherever it was interrupted and resumed.
"""

from __future__ import annotations

import math

import torch

_MASK = (1 << 31) - 1
_MUL = 0x45D9F3B  # < 2**27, so products stay inside int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    x = ((x ^ (x >> 16)) * _MUL) & _MASK
    return x ^ (x >> 16)


def keys(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """One 31-bit key per sample (int64 tensor like ``index``)."""
    base = int(_mix(torch.tensor((seed * 1_000_003 + epoch) & _MASK, dtype=torch.int64)))  # a plain int: no copy
    return _mix((index.long() & _MASK) ^ base)


def uniform(key: torch.Tensor, stream: int) -> torch.Tensor:
    """U[0, 1) per key; different ``stream`` numbers give independent draws."""
    return _mix(key ^ _mix(torch.full_like(key, stream + 1))).double().div(1 << 31).float()


def randint(key: torch.Tensor, stream: int, high: int) -> torch.Tensor:
    """Integers in [0, high) per key."""
    return (uniform(key, stream) * high).long().clamp_(max=high - 1)


def normal(key: torch.Tensor, stream: int) -> torch.Tensor:
    """N(0, 1) per key (Box-Muller)."""
    u1 = uniform(key, stream).clamp_(min=1e-7)
    u2 = uniform(key, stream + 1000)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def seed_of(seed: int, epoch: int, index: int) -> int:
    """A plain integer seed for per-image transforms in data-loader workers."""
    return int(keys(seed, epoch, torch.tensor([index]))[0])
