"""LRN alone, forward + backward: ours (models/lrn.py) vs nn.LocalResponseNorm per tower (the baseline, as
the package ran it before), at the paper's two LRN shapes, fp32 NCHW, fp32 channels_last and bf16 autocast
channels_last, with freed memory kept for reuse as `alexnet train` does on Linux CPUs (tuning.keep_freed_memory).

    python benchmarks/lrn.py [--batch 64] [--iters 5] [--device cpu]
    python benchmarks/lrn.py --device cuda --check [--batch 256] [--steps 20] [--rounds 3]

--check, the GPU self-check: (a) the LRN the device gets (on CUDA the fused Triton kernels; exit 1 if they
cannot be used there) against nn.LocalResponseNorm per tower in float64 on the same device, outputs and
gradients, fp32/bf16/fp16/fp64, NCHW and channels_last, the paper's two layer shapes, odd sizes, batch 1, and
on CUDA through torch.compile(fullgraph=True) (--compile elsewhere); exit 1 on any mismatch. (b) the paper
net's eager training step (our compute path, fused SGD) with this LRN against the same net with LRN replaced
by the identity, --rounds rounds of --steps steps taking turns, medians: one line with the ratio (goal on one
H100/H200: >= 0.8x). `--device cpu --check --batch 4 --steps 2 --rounds 1` checks the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import table, timeit  # noqa: E402
from train_step import our_path, paper_steps  # noqa: E402

from alexnet.engine import tuning  # noqa: E402
from alexnet.models.lrn import GroupedLRN, _triton_lrn  # noqa: E402


class ReferenceGroupedLRN(nn.Module):
    """What the package did before: nn.LocalResponseNorm on each tower's half, then cat."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 2):
        super().__init__()
        self.lrn, self.groups = nn.LocalResponseNorm(size, alpha, beta, k), groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(t) for t in x.chunk(self.groups, dim=1)], dim=1)


def bench(module: nn.Module, shape: tuple[int, ...], bf16: bool, cl: bool, dev: str, iters: int) -> float:
    fmt = torch.channels_last if cl else torch.contiguous_format
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


TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def mismatch(lrn, shape: tuple, dtype: torch.dtype, cl: bool, size: int, dev: str) -> str:
    """'' if ``lrn`` (a module like GroupedLRN) and its gradient equal the reference, else what differs."""
    gen = torch.Generator(device=dev).manual_seed(sum(shape))
    x = (torch.relu(torch.randn(shape, generator=gen, device=dev)) * 4).to(dtype)
    g = torch.randn(shape, generator=gen, device=dev).to(dtype)
    if cl:
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = lrn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    xr = x.detach().double().requires_grad_(True)
    ref = ReferenceGroupedLRN(size, 0.05, 0.75, 1.0, 2)(xr)
    (gr,) = torch.autograd.grad(ref, xr, g.double())
    tol = TOLERANCE[dtype]
    for name, got, want in (("output", y, ref), ("gradient", gx, gr)):
        if got.dtype != dtype or not torch.allclose(got.double(), want, rtol=tol, atol=tol):
            return f"{name}: {got.dtype}, max |diff| {(got.double() - want).abs().max().item():.3g}"
    return ""


def check_kernels(args: argparse.Namespace) -> int:
    """(a): the number of mismatching cases, one line each."""
    dev, b = args.device, args.batch
    shapes = [((b, 96, 55, 55), 5), ((b, 256, 27, 27), 5), ((1, 96, 55, 55), 5), ((3, 10, 5, 7), 4), ((2, 6, 1, 9), 7)]
    cases = {"eager": [(s, n, dt, cl) for s, n in shapes for dt in TOLERANCE for cl in (False, True)]}
    if dev.startswith("cuda") or args.compile:  # the compiled graph keeps the kernels (fullgraph: no break)
        s0, s3 = shapes[0][0], shapes[3][0]
        f32, b16, f16 = torch.float32, torch.bfloat16, torch.float16
        cases["torch.compile"] = [(s0, 5, b16, True), (s0, 5, f32, False), (s0, 5, f16, True), (s3, 4, f32, True)]
    bad = 0
    for how, todo in cases.items():
        for shape, size, dtype, cl in todo:
            lrn = GroupedLRN(size, 0.05, 0.75, 1.0, 2)
            if how == "torch.compile":
                torch._dynamo.reset()
                lrn = torch.compile(lrn, fullgraph=True)
            what = mismatch(lrn, shape, dtype, cl, size, dev)
            bad += bool(what)
            if what:
                layout = "channels_last" if cl else "NCHW"
                print(f"MISMATCH {how} {shape} size {size} {str(dtype)[6:]} {layout}: {what}")
    return bad


def time_net(args: argparse.Namespace) -> str:
    """(b): one line, the paper net's eager step with this LRN against the same net without LRN."""
    dev = torch.device(args.device)
    mode = our_path(dev)[2]
    steps = paper_steps(dev, args.batch)
    for step in steps.values():
        step()  # warm-up (and the Triton kernels' compilation)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {how: [] for how in steps}
    for _ in range(args.rounds):
        for how, step in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times[how].append((time.perf_counter() - t0) / args.steps)
    ours, without = (sorted(t)[len(t) // 2] for t in times.values())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return (f"paper net eager training step, this LRN vs LRN removed: {without / ours:.2f}x (goal >= 0.80x on a GPU); "
            f"{args.batch / ours:.0f} vs {args.batch / without:.0f} img/s, batch {args.batch}, {mode}, {name}")  # fmt: skip


def check(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and _triton_lrn() is None:
        print("FAIL: the Triton LRN cannot be used on this device (no triton, or no torch.library.triton_op)")
        return 1
    path = "Triton kernels" if args.device.startswith("cuda") else "plain ops on blocks"
    bad = check_kernels(args)
    print(f"LRN on {args.device} ({path}) against nn.LocalResponseNorm per tower: "
          + (f"{bad} mismatching cases" if bad else "all cases equal within tolerance"))  # fmt: skip
    print(time_net(args))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=None, help="default 64; 256 with --check on CUDA")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--check", action="store_true", help="the GPU self-check (see the module docstring)")
    ap.add_argument("--compile", action="store_true", help="--check through torch.compile off CUDA too")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    args.batch = args.batch or (256 if args.check and args.device.startswith("cuda") else 64)
    if args.check:
        return check(args)
    kept = tuning.keep_freed_memory(torch.device(args.device))  # as training does, for both sides
    rows = [["layer, dtype/layout", "nn.LocalResponseNorm (baseline) ms", "ours ms", "speed-up"]]
    for name, c, hw in (("norm1", 96, 55), ("norm2", 256, 27)):
        # fp32 NCHW; fp32 channels_last (the compute path without native bf16); bf16 autocast channels_last
        for bf16, cl in ((False, False), (False, True), (True, True)):
            shape = (args.batch, c, hw, hw)
            base = bench(ReferenceGroupedLRN().to(args.device), shape, bf16, cl, args.device, args.iters)
            ours = bench(GroupedLRN(5, 1e-4, 0.75, 2.0).to(args.device), shape, bf16, cl, args.device, args.iters)
            label = f"{name} {c}x{hw}x{hw}, {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW'}"
            rows.append([label, f"{1000 * base:.1f}", f"{1000 * ours:.1f}", f"{base / ours:.2f}x"])
    print(f"device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, forward + backward, "
          f"freed memory kept: {kept}")  # fmt: skip
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
