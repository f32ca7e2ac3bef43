"""The LRN's eager kernels: plain tensor ops on cache-sized blocks of the input.

LRN is a handful of elementwise passes and a five-channel window sum: memory-bound. Run pass by pass over
whole tensors, every pass reads and writes the full activations (and, for bf16 inputs, their fp32 copies).
Here each block of about 128K elements per thread is read once, carried through all passes in fp32 (fp64 for
fp64 inputs) in a few small buffers that stay in the core's cache, and written once: the full-size tensors
touched are the input and the output, one normaliser ``r = d^-beta`` in the input's dtype kept for the
backward (which sums d again from the input: cheaper than a power), and the incoming and outgoing gradients.

A block is a (n, l, groups, C/groups) view: rows of spatial positions with the channels last. In
channels_last memory the channel axis is the contiguous one; in NCHW the same view is a permutation.
The window runs along the last axis, on a copy padded with ``size - 1`` entries, as shifted adds.
"""

from __future__ import annotations

import torch

# Elements per thread in a block: its six or seven fp32 buffers, 3-3.5 MB, in L2 and L3. On a 2-core Xeon with
# AVX-512 BF16/AMX (2 MB L2 per core) the paper net's step was as fast with 32K as with 128K when the machine
# was quiet; every op of a block is a parallel region, and with the cores shared (data-loader workers, other
# jobs) each region waits for descheduled threads, so the fewer the blocks the less the step degrades. On a
# 2-core AMD EPYC with AVX-512 BF16 (1 MB L2 per core) 128K was faster than 64K and 32K.
BLOCK_PER_THREAD = 131072


def _rows(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, L, groups, C/groups) view of a 4-d tensor: n = 1, L = B*H*W in channels_last; n = B, L = H*W in NCHW."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        return x.view(b, groups, c // groups, h * w).permute(0, 3, 1, 2)
    return x.permute(0, 2, 3, 1).reshape(1, b * h * w, groups, c // groups)


def _block_rows(x: torch.Tensor) -> int:
    if x.device.type != "cpu":
        return x.numel()  # elsewhere one block, the whole tensor: a launch per op costs more than a pass
    return max(1, BLOCK_PER_THREAD * torch.get_num_threads() // x.shape[1])


def _split(v: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """Blocks of about ``rows`` rows of a (n, L, g, c) view: parts of one sample's L, or whole samples."""
    n, length = v.shape[:2]
    if length >= rows:
        return [blk for sample in v.split(1, 0) for blk in sample.split(rows, 1)]
    return list(v.split(max(1, rows // length), 0))


class _Buffers:
    """Compute-dtype scratch for one block, laid out as the tensor's blocks are (so that copies between them
    are straight runs), with its views cut once per block shape."""

    def __init__(self, x: torch.Tensor, groups: int, names: tuple[str, ...], pad: int, fill: float) -> None:
        v, rows = _rows(x, groups), _block_rows(x)
        n, length, g, c = v.shape
        nb, lb = (1, rows) if length >= rows else (min(n, max(1, rows // length)), length)
        dtype, nchw = _compute_dtype(x), x.is_contiguous()

        def alloc(width: int) -> torch.Tensor:
            if nchw:
                return torch.empty(nb, g, width, lb, dtype=dtype, device=x.device).permute(0, 3, 1, 2)
            return torch.empty(nb, lb, g, width, dtype=dtype, device=x.device)

        self.c, self.pad, self.rows, self.groups = c, pad, rows, groups
        self.full = {name: alloc(c) for name in names}
        self.padded = alloc(c + pad).fill_(fill)
        self.pairs = alloc(c + pad - 1) if pad >= 3 else None  # sums of neighbouring pairs (_window)
        self.cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def blocks(self, *tensors: torch.Tensor) -> zip:
        """The matching blocks of tensors shaped like x (same memory format)."""
        return zip(*(_split(_rows(t, self.groups), self.rows) for t in tensors))

    def views(self, blk: torch.Tensor, lo: int) -> dict[str, torch.Tensor]:
        """This block's buffers: the named ones, ``Pmid`` (the padded one's middle, from ``lo``), ``P0..`` (shifts)."""
        key = (blk.shape[0], blk.shape[1])
        if key not in self.cache:
            cut = (slice(0, key[0]), slice(0, key[1]))
            got = {name: t[cut] for name, t in self.full.items()}
            p = self.padded[cut]
            got["Pmid"] = p[..., lo : lo + self.c]
            for i in range(self.pad + 1):
                got[f"P{i}"] = p[..., i : i + self.c]
            if self.pairs is not None:
                q = self.pairs[cut]
                got["Pa"], got["Pb"], got["Q"] = p[..., :-1], p[..., 1:], q
                for i in range(0, self.pad, 2):
                    got[f"Q{i}"] = q[..., i : i + self.c]
            self.cache[key] = got
        return self.cache[key]


def _window(b: dict[str, torch.Tensor], size: int, out: torch.Tensor) -> torch.Tensor:
    """out = sum of the ``size`` shifted views of the padded buffer; from 4 on, as sums of neighbouring pairs
    (for the paper's 5: three adds, not four)."""
    if size == 1:
        return out.copy_(b["P0"])
    if size < 4:
        torch.add(b["P0"], b["P1"], out=out)
        return out.add_(b["P2"]) if size == 3 else out
    torch.add(b["Pa"], b["Pb"], out=b["Q"])  # Q_j = P_j + P_(j+1)
    torch.add(b["Q0"], b["Q2"], out=out)
    for i in range(4, size - 1, 2):
        out.add_(b[f"Q{i}"])
    return out.add_(b[f"P{size - 1}"]) if size % 2 else out


def _neg_pow(d: torch.Tensor, beta: float, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """out = d ** -beta. For the paper's 0.75, q / rsqrt(q) with q = rsqrt(d): on a 2-core AMD EPYC with AVX-512
    (torch 2.14.1, 256K fp32 elements) rsqrt took 44 us, sqrt 85, a multiply or divide 19-22 and pow 578."""
    if beta == 0.75:
        q = torch.rsqrt(d, out=out)
        return out.div_(torch.rsqrt(q, out=tmp))
    if beta == 0.5:
        return torch.rsqrt(d, out=out)
    if beta == 1.0:
        return torch.reciprocal(d, out=out)
    return torch.log(d, out=out).mul_(-beta).exp_()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # fp32 for bf16/fp16 inputs, float64 stays float64


@torch.no_grad()
def forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, r): the output and, if ``save``, the normaliser r = d^-beta (d = k + alpha/n * window sum of
    squares), both in x's dtype and memory format. ``x`` is contiguous or channels_last."""
    low = _compute_dtype(x) != x.dtype
    y = torch.empty_like(x)
    r = torch.empty_like(x) if save else y  # without save, r's blocks are y's (not written)
    # the padding holds k/n, so that the window sum of (alpha/n x^2 + k/n) is d itself, edges included
    bufs = _Buffers(x, groups, ("x", "D", "R", "U") if low else ("D", "R", "U"), size - 1, k / size)
    kn = torch.tensor(k / size, dtype=_compute_dtype(x), device=x.device)
    for xb, yb, rb in bufs.blocks(x, y, r):
        b = bufs.views(xb, size // 2)
        xf = b["x"].copy_(xb) if low else xb
        torch.addcmul(kn, xf, xf, value=alpha / size, out=b["Pmid"])
        rf = _neg_pow(_window(b, size, b["D"]), beta, rb if save and not low else b["R"], b["U"])
        if low:
            yb.copy_(torch.mul(xf, rf, out=b["U"]))
            if save:
                rb.copy_(rf)
        else:
            torch.mul(xf, rf, out=yb)
    return y, (r if save else None)


@torch.no_grad()
def backward(
    g: torch.Tensor, x: torch.Tensor, r: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """dL/dx from dL/dy = ``g``, the input and the normaliser r = d^-beta the forward kept (d is summed again
    from x, in the compute dtype: cheaper than a power, and exact where a saved bf16 d would round):
    dx_c = g_c r_c - (2 alpha beta / n) x_c sum_{i : c in W(i)} g_i x_i r_i / d_i."""
    low = _compute_dtype(x) != x.dtype
    g = g.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)
    dx = torch.empty_like(x)
    bufs = _Buffers(x, groups, ("x", "g", "r", "D") if low else ("D", "U"), size - 1, k / size)
    back = _Buffers(x, groups, (), size - 1, 0.0)  # the transposed window: c receives from each i with c in W(i)
    kn = torch.tensor(k / size, dtype=_compute_dtype(x), device=x.device)
    for xb, gb, rb, dxb in bufs.blocks(x, g, r, dx):
        b, t = bufs.views(xb, size // 2), back.views(xb, (size - 1) // 2)
        xf, gf, rf = (b[n].copy_(v) for n, v in zip("xgr", (xb, gb, rb))) if low else (xb, gb, rb)
        torch.addcmul(kn, xf, xf, value=alpha / size, out=b["Pmid"])
        dd = _window(b, size, b["D"])
        u = torch.mul(gf, rf, out=gf if low else b["U"])  # g d^-beta
        torch.mul(u, xf, out=t["Pmid"]).div_(dd)  # g x d^(-beta-1)
        s = _window(t, size, dd)
        if low:  # r's buffer is free again
            dxb.copy_(torch.addcmul(u, s, xf, value=-2.0 * alpha * beta / size, out=b["r"]))
        else:
            torch.addcmul(u, s, xf, value=-2.0 * alpha * beta / size, out=dxb)
    return dx
