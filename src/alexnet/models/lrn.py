"""Local response normalisation (paper §3.3), fast, per tower.

    b_c = a_c / (k + alpha/n * sum_{j in W(c)} a_j^2) ^ beta,   W(c) = [c - n//2, c + (n-1)//2], zero outside

This is exactly ``nn.LocalResponseNorm``'s function (alpha divided by n, as cuda-convnet and PyTorch do;
the window at the edges is zero-padded), applied separately inside each of ``groups`` channel groups.

PyTorch computes it with ``avg_pool3d`` over a padded 5-d copy, which has no channels_last or bf16 fast path;
the profiler put LRN at about 60 % of a bf16 training step of the paper's network on a 2-core AVX-512 BF16 CPU.
Here the channel window is a handful of shifted adds on a (B, groups, C/groups, H, W) view (the channel
axis is the contiguous one in channels_last), computed in fp32 whatever the input dtype, and the backward
is the closed form below instead of autograd through ~10 saved intermediates:

    d_c = k + alpha/n * S_c,   y_c = a_c * d_c^-beta
    dL/da_c = g_c * d_c^-beta - (2 alpha beta / n) * a_c * sum_{i : c in W(i)} g_i * y_i / d_i

For the paper's beta = 0.75, d^-beta is rsqrt(d) * sqrt(rsqrt(d)): two cheap instructions instead of pow's
log and exp. Measured numbers are in benchmarks/lrn.py and the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LRNSpec:
    size: int = 5  # §3.3: n = 5
    alpha: float = 1e-4  # §3.3 (divided by n, as cuda-convnet and PyTorch do)
    beta: float = 0.75  # §3.3
    k: float = 2.0  # §3.3


PAPER_LRN = LRNSpec()


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, :, c] = sum of t[:, :, c - before .. c + after] along dim 2 (zero outside): shifted in-place adds;
    under torch.export (pt2 and ONNX) the same sum as Pad + Slice + Add, operators every runtime has."""
    if torch.compiler.is_exporting():
        c, padded = t.shape[2], torch.nn.functional.pad(t, (0, 0, 0, 0, before, after))
        return sum(padded[:, :, i : i + c] for i in range(1, before + after + 1)) + padded[:, :, :c]
    out = t.clone()
    for s in range(1, before + 1):
        out[:, :, s:] += t[:, :, :-s]
    for s in range(1, after + 1):
        out[:, :, :-s] += t[:, :, s:]
    return out


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w)  # a view in both NCHW and channels_last


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0.75:
        r = torch.rsqrt(d)
        return r.mul_(torch.sqrt(r))
    if beta == 0.5:
        return torch.rsqrt(d)
    return d.pow(-beta)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # fp32 for bf16/fp16 inputs, float64 stays float64


def _forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, d): the output in x's dtype and the normaliser base d = k + alpha/n * window sum of squares."""
    xf = _grouped(x, groups).to(_compute_dtype(x))
    d = _window_sum(xf * xf, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
    return (xf * _neg_pow(d, beta)).to(x.dtype).view_as(x), d


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
        y, d = _forward(x, size, alpha, beta, k, groups)
        ctx.save_for_backward(x, d)
        ctx.params = (size, alpha, beta, groups)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        x, d = ctx.saved_tensors
        size, alpha, beta, groups = ctx.params
        xf = _grouped(x, groups).to(d.dtype)
        gf = _grouped(g, groups).to(d.dtype)
        r = _neg_pow(d, beta)
        t = gf * xf * r / d  # g_i * y_i / d_i
        s = _window_sum(t, (size - 1) // 2, size // 2)  # the transposed window
        dx = (gf * r).sub_(s.mul_(xf).mul_(2.0 * alpha * beta / size))
        return dx.to(x.dtype).view_as(x), None, None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        groups: int = 1) -> torch.Tensor:  # fmt: skip
    """``nn.functional.local_response_norm`` on each of ``groups`` channel groups; (B, C, H, W) in, same out."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    if not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous()
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
        return _LRNFunction.apply(x, size, alpha, beta, k, groups)
    return _forward(x, size, alpha, beta, k, groups)[0]  # inference, tracing and export: plain tensor ops


class GroupedLRN(nn.Module):
    """Local response normalisation applied separately inside each tower.

    In the paper each GPU normalises only its own feature maps (cuda-convnet ran the ``rnorm`` layer per
    GPU), so a kernel in tower A is never divided by activity in tower B. A single LRN over all 96 channels
    would leak across the boundary at channels 47/48 and break the tower separation.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, groups: int = 2) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = int(size), float(alpha), float(beta), float(k), groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The LRN as one opaque operator, for exporters that map it to a runtime's own (ONNX ``LRN``)."""
    return _forward(x, size, alpha, beta, k, groups)[0]


@lrn_op.register_fake
def _lrn_op_shape(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return torch.empty_like(x)


class LRNOp(nn.Module):
    """A GroupedLRN's settings, computed through ``alexnet::lrn`` (inference and export only)."""

    def __init__(self, lrn: GroupedLRN) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn_op(x, self.size, self.alpha, self.beta, self.k, self.groups)
