"""Small building blocks shared by the AlexNet variants (LRN lives in lrn.py)."""

from __future__ import annotations

import functools
from abc import abstractmethod

import torch
from torch import nn

from ..data import keyed_random
from ..errors import UserValueError

DROPOUT_STREAMS = {"fc6": 106, "fc7": 107}  # keyed_random streams of the two dropout layers


class Network(nn.Module):
    """What every network here has (timm's interface): ``forward_features(x)``, the pool3 maps (B, 256, 6, 6);
    ``forward_head(x, pre_logits=False)``, the logits of those maps, or with ``pre_logits`` the 4096-d fc7
    features; ``forward``, the two in turn; ``num_classes``; ``min_input_size``, the smallest side it takes."""

    num_classes: int
    min_input_size: int

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_input_size(x: torch.Tensor, minimum: int, name: str) -> None:
    """Raise a UserValueError (a ValueError) naming the minimum when an input is too small for the network."""
    if x.dim() != 4:
        raise UserValueError(f"{name} expects a 4-d batch (B, 3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < minimum or w < minimum:
        raise UserValueError(f"{name} needs inputs of at least {minimum}x{minimum} pixels, got {h}x{w}")


def pool_to_grid(x: torch.Tensor, pool: nn.AdaptiveAvgPool2d) -> torch.Tensor:
    """``pool`` (the adaptive average pool to fc6's 6x6 grid) applied to ``x``: nothing when the map is already
    that size (227 px for the paper's network: exports carry no no-op pool); with deterministic algorithms on
    (``train.deterministic``), the same averages as two small matrix products, because PyTorch's CUDA kernel
    for this pool's backward adds with atomics and has no deterministic variant (``torch.use_deterministic_
    algorithms``' list), and progressive resizing trains at sizes where the pool is not the identity."""
    out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
    if tuple(x.shape[-2:]) == out:
        return x
    if not torch.are_deterministic_algorithms_enabled():
        return pool(x)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    rows, cols = (_average_matrix(n, m, dtype, x.device) for n, m in zip(x.shape[-2:], out))
    return torch.matmul(torch.matmul(rows, x), cols.T)  # (m_rows, H) @ (B, C, H, W) @ (W, m_cols)


@functools.cache  # one per (size, dtype, device): no host-to-device copy on every step
def _average_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): row i averages inputs floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1, the
    adaptive pool's windows (PyTorch's AdaptiveAvgPool2d and Caffe's)."""
    with torch.inference_mode(False):  # cached: made during evaluation, it must still serve training's autograd
        i, j = torch.arange(n_out), torch.arange(n_in)
        start, end = (i * n_in) // n_out, ((i + 1) * n_in + n_out - 1) // n_out
        inside = (j[None] >= start[:, None]) & (j[None] < end[:, None])
        return (inside.float() / (end - start)[:, None]).to(dtype=dtype, device=device)  # no float64: MPS has none


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
