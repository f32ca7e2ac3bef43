"""LRN alone, forward + backward: ours (models/lrn.py) vs nn.LocalResponseNorm per tower (the baseline, as
the package ran it before), at the paper's two LRN shapes, fp32 NCHW and bf16 autocast channels_last, with
freed memory kept for reuse as `alexnet train` does on Linux CPUs (tuning.keep_freed_memory).

    python benchmarks/lrn.py [--batch 64] [--iters 5] [--device cpu]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import batch_args, table, timeit  # noqa: E402

from alexnet.engine import tuning  # noqa: E402
from alexnet.models.lrn import GroupedLRN  # noqa: E402


class ReferenceGroupedLRN(nn.Module):
    """What the package did before: nn.LocalResponseNorm on each tower's half, then cat."""

    def __init__(self) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(t) for t in x.chunk(2, dim=1)], dim=1)


def bench(module: nn.Module, shape: tuple[int, ...], bf16: bool, dev: str, iters: int) -> float:
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    x = torch.relu(torch.randn(shape, device=dev)).to(memory_format=fmt)
    if bf16:
        x = x.bfloat16()
    x.requires_grad_(True)
    g = torch.randn(shape, device=dev, dtype=x.dtype).contiguous(memory_format=fmt)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)

    def step() -> None:
        x.grad = None
        with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=bf16):  # as in a training step
            y = module(x)
        y.backward(g.to(y.dtype))

    return timeit(step, warmup=2, iters=iters, sync=sync)


def main() -> None:
    args = batch_args()
    kept = tuning.keep_freed_memory(torch.device(args.device))  # as training does, for both sides
    rows = [["layer, dtype/layout", "nn.LocalResponseNorm (baseline) ms", "ours ms", "speed-up"]]
    for name, c, hw in (("norm1", 96, 55), ("norm2", 256, 27)):
        for bf16 in (False, True):
            shape = (args.batch, c, hw, hw)
            base = bench(ReferenceGroupedLRN().to(args.device), shape, bf16, args.device, args.iters)
            ours = bench(GroupedLRN(5, 1e-4, 0.75, 2.0).to(args.device), shape, bf16, args.device, args.iters)
            label = f"{name} {c}x{hw}x{hw}, {'bf16 channels_last' if bf16 else 'fp32 NCHW'}"
            rows.append([label, f"{1000 * base:.1f}", f"{1000 * ours:.1f}", f"{base / ours:.2f}x"])
    print(f"device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, forward + backward, "
          f"freed memory kept: {kept}")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
