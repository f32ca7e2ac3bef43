"""Training-step images/s on synthetic batches: ours vs torchvision's AlexNet, fp32 eager, plain loop.

    python benchmarks/train_step.py [--batch 64] [--iters 5] [--device cpu]

Baseline (same invocation): torchvision.models.alexnet, fp32, NCHW, torch.optim.SGD defaults.
Ours: the same network (alexnet_owt) and the paper's (alexnet) on our default fast path:
bf16 autocast, channels_last, fused SGD. Also as a share of this machine's measured matmul peak
(a training step is ~3x the forward multiply-adds, 2 flops each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak, table, timeit  # noqa: E402

from alexnet import create_model  # noqa: E402
from alexnet.summary import summarize  # noqa: E402


def step_fn(model, opt, x, y, amp: bool, device: str):
    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = args.device
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    import torchvision

    torch.manual_seed(0)
    results = []
    configs = [
        ("torchvision alexnet, fp32 eager (baseline)", "tv", 224, False, False),
        ("ours alexnet_owt, bf16 + channels_last + fused SGD", "alexnet_owt", 224, True, True),
        ("ours alexnet (paper), bf16 + channels_last + fused SGD", "alexnet", 227, True, True),
        ("ours alexnet (paper), fp32 eager, fused SGD", "alexnet", 227, False, False),
    ]
    for label, name, size, amp, cl in configs:
        if name == "tv":
            model = torchvision.models.alexnet().to(dev)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        else:
            model = create_model(name, init="kaiming").to(dev)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
        x = torch.randn(args.batch, 3, size, size, device=dev)
        y = torch.randint(0, 1000, (args.batch,), device=dev)
        if cl:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        s = timeit(step_fn(model, opt, x, y, amp, dev), warmup=2, iters=args.iters, sync=sync)
        macs = summarize("alexnet_owt" if name == "tv" else name, size)["macs"]
        results.append((label, args.batch / s, 6 * macs * args.batch / s / 1e9, amp))
        del model, opt
    peak16, peak32 = matmul_peak(torch.bfloat16, dev), matmul_peak(torch.float32, dev)
    base = results[0][1]
    rows = [["config", "img/s", "vs baseline", "GFLOP/s", "% of peak"]]
    for label, ips, gflops, amp in results:
        peak = peak16 if amp else peak32
        rows.append([label, f"{ips:.1f}", f"{ips / base:.2f}x", f"{gflops:.0f}", f"{100 * gflops / peak:.0f} %"])
    print(f"device {dev}, batch {args.batch}, threads {torch.get_num_threads()}; "
          f"measured matmul peak: bf16 {peak16:.0f} GFLOP/s, fp32 {peak32:.0f} GFLOP/s")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
