"""The fast LRN computes nn.LocalResponseNorm's function, per tower, forward and backward."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet.models.lrn import GroupedLRN, local_response_norm


def _reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    lrn = nn.LocalResponseNorm(size, alpha, beta, k)
    return torch.cat([lrn(t) for t in x.float().chunk(groups, dim=1)], dim=1)


@pytest.mark.parametrize("size", [5, 4, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_equals_local_response_norm_fp32(size: int, groups: int, batch: int, layout: str) -> None:
    torch.manual_seed(size * 10 + groups + batch)
    x = torch.relu(torch.randn(batch, 12, 7, 9)) * 3  # large enough that the normaliser matters
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    g = torch.randn(batch, 12, 7, 9)
    ours = local_response_norm(x, size, 0.05, 0.75, 1.0, groups)
    (gx,) = torch.autograd.grad(ours, x, g)
    xr = x.detach().clone().requires_grad_(True)
    ref = _reference(xr, size, 0.05, 0.75, 1.0, groups)
    (gr,) = torch.autograd.grad(ref, xr, g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gr, rtol=1e-4, atol=1e-6)
    assert ours.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_equals_local_response_norm_under_bf16_autocast(layout: str) -> None:
    torch.manual_seed(0)
    x = (torch.relu(torch.randn(4, 96, 11, 11)) * 4).bfloat16()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    g = torch.randn(4, 96, 11, 11).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = GroupedLRN(5, 1e-2, 0.75, 2.0, groups=2)(x)
    assert ours.dtype == torch.bfloat16  # keeps the autocast dtype; computed in fp32 inside
    (gx,) = torch.autograd.grad(ours, x, g)
    xr = x.detach().float().requires_grad_(True)
    ref = _reference(xr, 5, 1e-2, 0.75, 2.0, 2)
    (gr,) = torch.autograd.grad(ref, xr, g.float())
    torch.testing.assert_close(ours.float(), ref, rtol=1e-2, atol=1e-2)  # bf16 rounding of the output
    torch.testing.assert_close(gx.float(), gr, rtol=2e-2, atol=2e-2)


def test_gradcheck_float64() -> None:
    x = (torch.relu(torch.randn(2, 8, 4, 5, dtype=torch.float64)) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 0.1, 0.75, 1.0, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 4, 0.2, 0.6, 1.5, 1), (x,))  # general beta


def test_the_paper_network_uses_it_per_tower() -> None:
    """Tower A's output does not depend on tower B's channels (a single LRN would leak at 47/48)."""
    lrn = GroupedLRN(5, 1e-4, 0.75, 2.0, groups=2)
    x = torch.relu(torch.randn(1, 96, 5, 5)) * 50
    y = x.clone()
    y[:, 48:] *= 3
    torch.testing.assert_close(lrn(x)[:, :48], lrn(y)[:, :48], rtol=0, atol=0)
    assert not torch.equal(lrn(x)[:, 48:], lrn(y)[:, 48:])


def test_torch_compile_traces_it() -> None:
    lrn = GroupedLRN(5, 1e-2, 0.75, 2.0, groups=2)
    x = (torch.relu(torch.randn(2, 8, 6, 6)) * 3).requires_grad_(True)
    compiled = torch.compile(lrn, backend="aot_eager", fullgraph=True)  # the graph capture inductor also uses
    out = compiled(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    (ref_g,) = torch.autograd.grad(lrn(x).sum(), x)
    torch.testing.assert_close(out, lrn(x))
    torch.testing.assert_close(g, ref_g)


def _reference64(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    lrn = nn.LocalResponseNorm(size, alpha, beta, k)
    return torch.cat([lrn(t) for t in x.chunk(groups, dim=1)], dim=1)


DTYPES = {"fp32": (torch.float32, 1e-5, 1e-6), "fp64": (torch.float64, 1e-10, 1e-12),
          "fp16": (torch.float16, 5e-3, 5e-3), "bf16": (torch.bfloat16, 2e-2, 2e-2)}  # fmt: skip


def _against_reference(lrn, shape: tuple, dtype: str, layout: str, size: int = 5, alpha: float = 0.05,
                       beta: float = 0.75, k: float = 1.0, groups: int = 2) -> None:  # fmt: skip
    """``lrn``'s output and gradient against nn.LocalResponseNorm per tower, computed in float64 from the same
    input; the output keeps the input's dtype and memory format."""
    dt, rtol, atol = DTYPES[dtype]
    gen = torch.Generator().manual_seed(sum(shape) + size)
    x = (torch.relu(torch.randn(shape, generator=gen)) * 4).to(dt)
    g = torch.randn(shape, generator=gen).to(dt)
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours = lrn(x, size, alpha, beta, k, groups)
    (gx,) = torch.autograd.grad(ours, x, g)
    xr = x.detach().double().requires_grad_(True)
    ref = _reference64(xr, size, alpha, beta, k, groups)
    (gr,) = torch.autograd.grad(ref, xr, g.double())
    assert ours.dtype == dt and gx.dtype == dt
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert ours.is_contiguous(memory_format=fmt) == x.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx.double(), gr, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape, size", [((3, 96, 13, 13), 5), ((1, 10, 5, 7), 4), ((2, 6, 1, 1), 7)])
def test_equals_the_reference_in_every_dtype_and_layout(
    shape: tuple, size: int, layout: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On blocks that split samples and join them (a few hundred elements each), at the edges of the towers,
    with windows wider than a tower (7 over 3 channels) and even ones."""
    from alexnet.models import lrn_blocks

    monkeypatch.setattr(lrn_blocks, "BLOCK_PER_THREAD", 300 // torch.get_num_threads())
    _against_reference(local_response_norm, shape, dtype, layout, size)


def test_the_backward_keeps_the_input_and_one_normaliser_in_its_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 training step keeps two bf16 tensors per LRN for its backward (the pass-by-pass version kept the
    input and an fp32 normaliser, 3x the input's bytes), whatever torch.compiler.is_exporting says."""
    x = torch.relu(torch.randn(2, 96, 27, 27)).bfloat16().contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    for exporting in (False, True):
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda e=exporting: e, raising=False)
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t, lambda t: t):
            y = local_response_norm(x, 5, 1e-4, 0.75, 2.0, 2)
        assert [t.dtype for t in saved] == [torch.bfloat16] * 2
        assert sum(t.numel() * t.element_size() for t in saved) == 2 * x.numel() * x.element_size()
        y.sum().backward()


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """The tensors of at least ``threshold`` elements that ops create (not views, not out= arguments)."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold, self.made = threshold, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}  # fmt: skip
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.threshold:
                if t.untyped_storage().data_ptr() not in seen:
                    self.made.append((str(func), t.dtype))
        return out


def test_no_full_size_temporaries() -> None:
    """Forward: its output and the normaliser it keeps; backward: the gradient. Nothing else as large as a
    quarter of the input (the pass-by-pass version made fifteen fp32 tensors, each twice the input's bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 4))  # the scratch grows with the threads sharing each op
    try:
        x = torch.relu(torch.randn(8, 96, 55, 55)).bfloat16().contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        g = torch.randn(x.shape, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        with _Allocations(x.numel() // 4) as fwd:
            y = local_response_norm(x, 5, 1e-4, 0.75, 2.0, 2)
        with _Allocations(x.numel() // 4) as bwd:
            y.backward(g)
    finally:
        torch.set_num_threads(threads)
    assert [dt for _, dt in fwd.made] == [torch.bfloat16] * 2, fwd.made
    assert [dt for _, dt in bwd.made] == [torch.bfloat16], bwd.made


def test_export_sees_plain_operators() -> None:
    """torch.export (pt2, ONNX) traces whole-tensor aten operators: nothing of this package, no in-place
    slice writes (ScatterND in ONNX), and the program computes what eager does."""
    lrn = GroupedLRN(5, 1e-2, 0.75, 2.0, groups=2).eval()
    x = torch.relu(torch.randn(2, 8, 6, 6)) * 3
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(lrn, (x,), dynamic_shapes={"x": {0: batch}})
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert all(op.startswith("aten.") for op in ops), ops
    assert not any("scatter" in op or "copy_" in op for op in ops), ops
    x3 = torch.relu(torch.randn(3, 8, 6, 6)) * 3
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x3), lrn(x3), rtol=1e-6, atol=1e-6)


def _triton_against_reference() -> None:
    from alexnet.models import lrn_triton

    for shape, size in (((2, 12, 7, 9), 5), ((1, 10, 5, 7), 4), ((3, 6, 1, 1), 7)):  # tiles partly filled
        for dtype in ("fp32", "bf16", "fp16"):
            for layout in ("nchw", "channels_last"):
                _against_reference(lrn_triton.lrn, shape, dtype, layout, size)
    lrn_triton.TILE = 1 << 16  # the interpreter pays per program: the layers' shapes in a few tiles
    for shape, dtype, layout in (
        ((1, 96, 55, 55), "bf16", "channels_last"),
        ((1, 96, 55, 55), "fp32", "nchw"),
        ((1, 256, 27, 27), "bf16", "nchw"),
        ((1, 256, 27, 27), "fp16", "channels_last"),
    ):
        _against_reference(lrn_triton.lrn, shape, dtype, layout)


def _triton_gradcheck() -> None:
    from alexnet.models import lrn_triton

    x = (torch.rand(1, 4, 2, 2, dtype=torch.float64) + 0.1).contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(
        lambda t: lrn_triton.lrn(t, 3, 0.2, 0.75, 1.0, 2), (x.requires_grad_(),), fast_mode=True
    )
    x = torch.rand(1, 6, 1, 3, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(
        lambda t: lrn_triton.lrn(t, 4, 0.3, 0.6, 1.5, 1), (x.requires_grad_(),), fast_mode=True
    )


def test_the_gpu_kernels_under_tritons_interpreter() -> None:
    """The Triton kernels (forward, the analytic backward) run by Triton's interpreter on CPU tensors, in one
    fresh process: the interpreter must be on before the kernels are defined. A GPU sees them compiled
    (benchmarks/lrn.py --check); this checks what they compute."""
    pytest.importorskip("triton")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_lrn; "
            "test_lrn._triton_against_reference(); test_lrn._triton_gradcheck()")  # fmt: skip
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
