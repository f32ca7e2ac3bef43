"""The LRN as one fused Triton kernel each way (CUDA; imported by lrn.py only for CUDA tensors).

Each program reads a tile of positions x one tower's channels, forms the window sum of squares from
``size`` shifted loads of the same tile (they hit the cache: from memory the input is read once), and writes
the output and, when a backward will follow, the normaliser base d = k + alpha/n * window sum in the input's
dtype. The backward reads the input, d and the incoming gradient the same way and writes the gradient:

    dx_c = g_c d_c^-beta - (2 alpha beta / n) x_c sum_{i : c in W(i)} g_i x_i d_i^(-beta-1)

Arithmetic is in fp32 (fp64 for fp64 inputs); NCHW and channels_last are both read in place. The kernels are
registered with ``torch.library.triton_op`` (and the forward's autograd formula), so torch.compile and
compiled DDP graphs keep them instead of breaking the graph. Triton's interpreter (``TRITON_INTERPRET=1``)
runs them on CPU tensors, which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

TILE = 2048  # elements per program: positions x next power of two of the tower's channels


@triton.jit
def _tile(base, ch, pmask, cmask, s_c, CL: tl.constexpr):
    """Offsets and mask of a (positions, channels) tile; channels fastest in channels_last, positions in NCHW."""
    if CL:
        offs, mask = base[:, None] + (ch * s_c)[None, :], pmask[:, None] & cmask[None, :]
    else:
        offs, mask = base[None, :] + (ch * s_c)[:, None], pmask[None, :] & cmask[:, None]
    return offs, mask


@triton.jit
def _start(P, HW, s_b, s_c, s_hw, CG, BLOCK_P: tl.constexpr, C_BLK: tl.constexpr):
    """This program's positions (their offsets and mask) and its tower's first channel's offset."""
    pos = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos64 = pos.to(tl.int64)
    tower = (tl.program_id(1) * CG).to(tl.int64) * s_c
    return (pos64 // HW) * s_b + (pos64 % HW) * s_hw + tower, pos < P, tl.arange(0, C_BLK)


@triton.jit
def _forward_kernel(x_ptr, y_ptr, d_ptr, P, HW, s_b, s_c, s_hw, CG, alpha_n, beta, k,
                    SIZE: tl.constexpr, C_BLK: tl.constexpr, BLOCK_P: tl.constexpr, CL: tl.constexpr,
                    SAVE: tl.constexpr, F64: tl.constexpr):  # fmt: skip
    base, pmask, ch = _start(P, HW, s_b, s_c, s_hw, CG, BLOCK_P, C_BLK)
    cdt = tl.float64 if F64 else tl.float32
    lo: tl.constexpr = SIZE // 2
    offs, mask = _tile(base, ch, pmask, ch < CG, s_c, CL)
    xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(cdt)
    acc = xc * xc
    for j in tl.static_range(SIZE):
        if j != lo:
            cj = ch + (j - lo)
            o, m = _tile(base, cj, pmask, (cj >= 0) & (cj < CG), s_c, CL)
            v = tl.load(x_ptr + o, mask=m, other=0.0).to(cdt)
            acc += v * v
    d = k + alpha_n * acc
    y = xc * tl.exp(-beta * tl.log(d))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE:
        tl.store(d_ptr + offs, d.to(d_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(g_ptr, x_ptr, d_ptr, dx_ptr, P, HW, s_b, s_c, s_hw, CG, alpha_n, beta,
                     SIZE: tl.constexpr, C_BLK: tl.constexpr, BLOCK_P: tl.constexpr, CL: tl.constexpr,
                     F64: tl.constexpr):  # fmt: skip
    base, pmask, ch = _start(P, HW, s_b, s_c, s_hw, CG, BLOCK_P, C_BLK)
    cdt = tl.float64 if F64 else tl.float32
    lo: tl.constexpr = (SIZE - 1) // 2  # the transposed window: c receives from each i with c in W(i)
    offs, mask = _tile(base, ch, pmask, ch < CG, s_c, CL)
    gc = tl.load(g_ptr + offs, mask=mask, other=0.0).to(cdt)
    xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(cdt)
    logd = tl.log(tl.load(d_ptr + offs, mask=mask, other=1.0).to(cdt))
    acc = gc * xc * tl.exp((-beta - 1.0) * logd)
    for j in tl.static_range(SIZE):
        if j != lo:
            cj = ch + (j - lo)
            o, m = _tile(base, cj, pmask, (cj >= 0) & (cj < CG), s_c, CL)
            gj = tl.load(g_ptr + o, mask=m, other=0.0).to(cdt)
            xj = tl.load(x_ptr + o, mask=m, other=0.0).to(cdt)
            dj = tl.load(d_ptr + o, mask=m, other=1.0).to(cdt)
            acc += gj * xj * tl.exp((-beta - 1.0) * tl.log(dj))
    dx = gc * tl.exp(-beta * logd) - (2.0 * alpha_n * beta) * xc * acc
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _wrap(kernel):
    """wrap_triton(kernel), which traces into graphs; torch 2.6 refuses the interpreter's kernels (eager only)."""
    try:
        return wrap_triton(kernel)
    except RuntimeError:
        return kernel


def _launch(x: torch.Tensor, groups: int) -> tuple[tuple[int, int], dict, tuple]:
    """Grid, tile constants and the shape/stride arguments both kernels take."""
    b, c, h, w = x.shape
    cg = c // groups
    c_blk = triton.next_power_of_2(cg)
    block_p = max(1, TILE // c_blk)
    consts = {"C_BLK": c_blk, "BLOCK_P": block_p, "CL": not x.is_contiguous(), "F64": x.dtype == torch.float64}
    return (
        (triton.cdiv(b * h * w, block_p), groups),
        consts,
        (b * h * w, h * w, x.stride(0), x.stride(1), x.stride(3), cg),
    )


@triton_op("alexnet::lrn_triton_forward", mutates_args=())
def lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, d), both like x; d is empty unless ``save``. ``x``: contiguous or channels_last, (B, C, H, W)."""
    y = torch.empty_like(x)
    d = torch.empty_like(x) if save else x.new_empty(0)
    grid, consts, dims = _launch(x, groups)
    _wrap(_forward_kernel)[grid](x, y, d if save else y, *dims, alpha / size, beta, k, SIZE=size, SAVE=save,
                                       **consts)  # fmt: skip
    return y, d


@triton_op("alexnet::lrn_triton_backward", mutates_args=())
def lrn_backward(
    g: torch.Tensor, x: torch.Tensor, d: torch.Tensor, size: int, alpha: float, beta: float, groups: int
) -> torch.Tensor:
    """dL/dx from dL/dy = ``g``, the input and the forward's ``d``."""
    g = g.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)
    dx = torch.empty_like(x)
    grid, consts, dims = _launch(x, groups)
    _wrap(_backward_kernel)[grid](g, x, d, dx, *dims, alpha / size, beta, SIZE=size, **consts)
    return dx


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, size, alpha, beta, _k, groups, _save = inputs
    ctx.save_for_backward(x, output[1])
    ctx.params = (size, alpha, beta, groups)


def _backward(ctx, grad_y: torch.Tensor, _grad_d: torch.Tensor) -> tuple:
    x, d = ctx.saved_tensors
    return lrn_backward(grad_y, x, d, *ctx.params), None, None, None, None, None, None


lrn_forward.register_autograd(_backward, setup_context=_setup_context)


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The per-tower LRN of a (B, C, H, W) tensor in NCHW or channels_last memory, through the Triton kernels."""
    return lrn_forward(x, size, alpha, beta, k, groups, torch.is_grad_enabled() and x.requires_grad)[0]
