"""The fast LRN computes nn.LocalResponseNorm's function, per tower, forward and backward."""

from __future__ import annotations

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
