"""Local response normalisation (paper §3.3), fast, per tower.

    b_c = a_c / (k + alpha/n * sum_{j in W(c)} a_j^2) ^ beta,   W(c) = [c - n//2, c + (n-1)//2], zero outside

This is exactly ``nn.LocalResponseNorm``'s function (alpha divided by n, as cuda-convnet and PyTorch do;
the window at the edges is zero-padded), applied separately inside each of ``groups`` channel groups.

LRN is memory-bound: a five-channel window sum and a few elementwise steps. PyTorch computes it with
``avg_pool3d`` over a padded 5-d copy (no channels_last or bf16 fast path); done pass by pass on whole
tensors it allocated 15 full-size fp32 temporaries per layer and training step. Three implementations of the one
function, chosen by where the tensor is:

- eager, any device but CUDA (lrn_blocks.py): plain tensor ops on cache-sized blocks, in fp32 whatever the
  input dtype, and a custom autograd function whose backward is the closed form below. The forward keeps
  the input and one normaliser ``r = d^-beta`` in the input's dtype; the only full-size tensors it allocates
  are its output and ``r``, and the backward's only one is its result.
- CUDA where Triton runs (lrn_triton.py, imported only there; triton_runs): one fused Triton kernel each way, registered with
  ``torch.library.triton_op`` and its autograd formula, so torch.compile and compiled DDP graphs keep it.
- traced (torch.compile off CUDA, torch.export, ONNX, jit.trace, torch.func transforms): the same formula as
  whole-tensor ops (Pad, Slice, Add, Mul, Sqrt, Reciprocal), which every runtime has and compilers fuse.
  Which one runs is decided by the tensor (its device and type) and by torch.compiler.is_compiling, never by
  is_exporting (before torch 2.14 that also read True under torch.compile).

    d_c = k + alpha/n * S_c,   y_c = a_c * d_c^-beta
    dL/da_c = g_c * d_c^-beta - (2 alpha beta / n) * a_c * sum_{i : c in W(i)} g_i * a_i * d_i^(-beta-1)

Measured by benchmarks/train_step.py (torch 2.14.1, one SGD step of the paper net at batch 64 in bf16 autocast +
channels_last, against the same net with LRN removed): on a 2-core AMD EPYC with AVX-512 BF16 LRN took 9 % of
the step, both in fresh processes and with the two nets' steps alternating in one (5 rounds), 57 % with
nn.LocalResponseNorm per tower (benchmarks/results/train_step-cpu-avx512bf16.log); on a 2-core AMD EPYC with
AVX2 only (fp32 + channels_last) 5 % with the two nets' steps alternating in one process (7 % timed alone;
train_step-cpu-avx2.log); on a 2-core Intel Xeon with AMX the blocks before their last change (d kept, two
square roots) took 32 %. While other processes share the cores, blocks lose more: each is a parallel region
that waits for threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import lrn_blocks


@dataclass(frozen=True)
class LRNSpec:
    size: int = 5  # §3.3: n = 5
    alpha: float = 1e-4  # §3.3 (divided by n, as cuda-convnet and PyTorch do)
    beta: float = 0.75  # §3.3
    k: float = 2.0  # §3.3


PAPER_LRN = LRNSpec()


def _traced(x: torch.Tensor) -> bool:
    """Whether ``x`` is being traced rather than computed: torch.compile (dynamo), jit.trace, torch.export and
    make_fx (fake and functional tensor subclasses), torch.func transforms (wrapped tensors)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or type(x) not in (torch.Tensor, nn.Parameter):
        return True
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(wrapped is not None and wrapped(x))


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels take it: contiguous or channels_last (a copy only for other strides)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _plain(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The function as whole-tensor ops with no in-place writes (an exported graph has no ScatterND)."""
    b, c, h, w = x.shape
    xf = x.view(b, groups, c // groups, h, w).to(torch.promote_types(x.dtype, torch.float32))
    cg, padded = c // groups, F.pad(xf * xf, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    s = sum((padded[:, :, i : i + cg] for i in range(1, size)), padded[:, :, :cg])
    d = s * (alpha / size) + k
    # d^-0.75 (the paper's beta) as Sqrt, Mul, Reciprocal, which runtimes without Pow have too
    if beta == 0.75:
        q = d.sqrt()
        r = (q * q.sqrt()).reciprocal()
    else:
        r = d.pow(-beta)
    return (xf * r).to(x.dtype).view_as(x)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
        y, r = lrn_blocks.forward(x, size, alpha, beta, k, groups, save=True)
        ctx.save_for_backward(x, r)
        ctx.params = (size, alpha, beta, k, groups)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        x, r = ctx.saved_tensors
        return lrn_blocks.backward(g, x, r, *ctx.params), None, None, None, None, None


LRN = Callable[[torch.Tensor, int, float, float, float, int], torch.Tensor]  # (x, size, alpha, beta, k, groups)
_TRITON: LRN | bool | None = None  # None: not looked for yet; False: not there


def _triton_lrn() -> LRN | None:
    """lrn_triton.lrn where Triton and torch.library.triton_op are there, else None (checked once)."""
    global _TRITON
    if _TRITON is None:
        try:
            from .lrn_triton import lrn

            _TRITON = lrn
        except ImportError:  # no triton (e.g. Windows wheels) or a torch before triton_op
            _TRITON = False
    return _TRITON if callable(_TRITON) else None


def triton_runs(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Whether Triton's kernels run on ``device`` (the fused LRN; inductor's, under torch.compile): CUDA at
    compute capability 7.0+ (Triton's floor; PyTorch refuses torch.compile below it) or ROCm, with Triton there
    (PyTorch's Windows wheels bring none); a bf16 ``dtype`` only from 8.0 (Ampere), the first with bf16. The
    capability is read through get_device_properties, which torch.compile folds to a constant."""
    if device.type != "cuda" or _triton_lrn() is None:
        return False
    if torch.version.hip is not None:
        return True
    return torch.cuda.get_device_properties(device).major >= (8 if dtype == torch.bfloat16 else 7)


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        groups: int = 1) -> torch.Tensor:  # fmt: skip
    """``nn.functional.local_response_norm`` on each of ``groups`` channel groups; (B, C, H, W) in, same out."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    x = _dense(x)
    if x.is_cuda and not torch.jit.is_tracing() and type(x) in (torch.Tensor, nn.Parameter):
        fused = _triton_lrn()  # under torch.compile too: the op and its backward are in the graph
        if fused is not None and triton_runs(x.device, x.dtype):
            return fused(x, size, alpha, beta, k, groups)
    if _traced(x):
        return _plain(x, size, alpha, beta, k, groups)
    if torch.is_grad_enabled() and x.requires_grad:
        return _LRNFunction.apply(x, size, alpha, beta, k, groups)
    return lrn_blocks.forward(x, size, alpha, beta, k, groups, save=False)[0]


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
    return lrn_blocks.forward(_dense(x), size, alpha, beta, k, groups, save=False)[0]


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
