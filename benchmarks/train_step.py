"""Training-step images/s on synthetic batches: ours vs torchvision's AlexNet, fp32 eager, plain loop.

    python benchmarks/train_step.py [--batch 64] [--iters 5] [--device cpu]

Baseline (same invocation, run first): torchvision.models.alexnet, fp32, NCHW, torch.optim.SGD defaults.
Ours on the compute path `auto` picks for this device (tuning.py: bf16 autocast where the device has it
natively, else fp32; channels_last; fused SGD), with freed memory kept for reuse on Linux CPUs
(tuning.keep_freed_memory). The paper's network (alexnet) three ways: with this package's LRN, with the
previous LRN (nn.LocalResponseNorm on each tower, as 0.1 had it), and with LRN replaced by the identity, so
that LRN's share of the step is (t_with - t_without) / t_with, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import batch_args, matmul_peak, table, timeit  # noqa: E402

from alexnet import create_model
from alexnet.commands.summary import summarize  # noqa: E402
from alexnet.config import TrainConfig  # noqa: E402
from alexnet.engine import tuning  # noqa: E402
from alexnet.models.lrn import GroupedLRN  # noqa: E402


class PreviousLRN(nn.Module):
    """0.1's per-tower LRN: nn.LocalResponseNorm (avg_pool3d over a padded 5-d view) on each half, then cat."""

    def __init__(self, m: GroupedLRN) -> None:
        super().__init__()
        self.groups, self.lrn = m.groups, nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(t) for t in x.chunk(self.groups, dim=1)], dim=1)


def swap_lrn(model: nn.Module, how: str) -> nn.Module:
    for name in ("norm1", "norm2"):
        m = getattr(model.features, name)
        setattr(model.features, name, PreviousLRN(m) if how == "previous" else nn.Identity())
    return model


def step_fn(model, opt, x, y, amp: bool, device: str):
    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(label: str, name: str, lrn: str, size: int, amp: bool, cl: bool, args: argparse.Namespace) -> tuple:
    import torchvision

    dev = args.device
    torch.manual_seed(0)
    if name == "tv":
        model = torchvision.models.alexnet().to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        model = create_model(name, init="kaiming")
        model = (swap_lrn(model, lrn) if lrn != "ours" else model).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    x = torch.randn(args.batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    s = timeit(step_fn(model, opt, x, y, amp, dev), warmup=2, iters=args.iters, sync=sync)
    macs = summarize("alexnet_owt" if name == "tv" else name, size)["macs"]
    return label, args.batch / s, 6 * macs * args.batch / s / 1e9, amp


def main() -> None:
    args = batch_args()
    dev = torch.device(args.device)
    path = tuning.resolve(TrainConfig(), dev)
    amp, cl = path.amp == "bf16", bool(path.channels_last)
    mode = f"{'bf16' if amp else 'fp32'}{' + channels_last' if cl else ''} + fused SGD"
    results = [
        run("torchvision alexnet, fp32 eager (baseline)", "tv", "", 224, False, False, args)
    ]  # before the allocator change
    kept = tuning.keep_freed_memory(dev)
    results += [
        run(f"ours alexnet_owt, {mode}", "alexnet_owt", "ours", 224, amp, cl, args),
        run(f"ours alexnet (paper, this LRN), {mode}", "alexnet", "ours", 227, amp, cl, args),
        run(f"ours alexnet (paper, previous LRN), {mode}", "alexnet", "previous", 227, amp, cl, args),
        run(f"ours alexnet (paper, LRN removed), {mode}", "alexnet", "identity", 227, amp, cl, args),
    ]
    peak16 = matmul_peak(torch.bfloat16, args.device) if amp else 0.0
    peak32 = matmul_peak(torch.float32, args.device)
    base = results[0][1]
    rows = [["config", "img/s", "vs baseline", "GFLOP/s", "% of matmul peak"]]
    for label, ips, gflops, use_bf16 in results:
        peak = peak16 if use_bf16 else peak32
        rows.append([label, f"{ips:.1f}", f"{ips / base:.2f}x", f"{gflops:.0f}", f"{100 * gflops / peak:.0f} %"])
    print(f"device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, compute path {mode}, "
          f"freed memory kept: {kept}; measured matmul peak: fp32 {peak32:.0f} GFLOP/s"
          + (f", bf16 {peak16:.0f}" if amp else ""))  # fmt: skip
    print(table(rows))
    without = results[4][1]
    for label, ips in ((results[2][0], results[2][1]), (results[3][0], results[3][1])):
        print(f"LRN share of the step, {label.split('(')[1].split(')')[0]}: {100 * (1 - ips / without) if without else 0:.0f} %"
              f" ({1000 * args.batch / ips:.0f} ms vs {1000 * args.batch / without:.0f} ms without LRN)")  # fmt: skip
    print(f"paper net / alexnet_owt: {results[2][1] / results[1][1]:.2f}")


if __name__ == "__main__":
    main()
