"""One GPU, one command, under 5 minutes: training images/s (synthetic, and from a prepared store),
inference images/s, bf16, with torchvision's fp32 eager AlexNet as the baseline in the same run.

    python benchmarks/gpu.py [--batch 512] [--seconds 20]

The store is synthetic (random uint8 images at 256x256 in a temporary directory, no dataset needed),
read through the same StoreImages + BatchAugment code as training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak, table  # noqa: E402

from alexnet import create_model  # noqa: E402
from alexnet.data import keyed_random  # noqa: E402
from alexnet.data.store import StoreImages  # noqa: E402
from alexnet.data.transforms import BatchAugment, Normalizer  # noqa: E402


def throughput(step, batch: int, seconds: float) -> float:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def synthetic_store(root: Path, n: int, size: int = 256) -> StoreImages:
    arr = np.memmap(root / "train.u8", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    rng = np.random.default_rng(0)
    for i in range(0, n, 1000):
        arr[i : i + 1000] = rng.integers(0, 255, size=arr[i : i + 1000].shape, dtype=np.uint8)
    arr.flush()
    manifest = {"size": size, "format": "raw", "splits": {"train": {"count_written": n}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return StoreImages(root, "train", manifest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--store-images", type=int, default=20000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    import torchvision

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    b = args.batch
    y = torch.randint(0, 1000, (b,), device=dev)
    rows = [["config", "img/s", "vs baseline"]]

    def train_step(model, opt, x_fn, amp):
        def step():
            x = x_fn()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    tv = torchvision.models.alexnet().to(dev)
    x224 = torch.randn(b, 3, 224, 224, device=dev)
    base = throughput(train_step(tv, torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9), lambda: x224, False), b,
                      args.seconds)  # fmt: skip
    rows.append(["train: torchvision alexnet fp32 eager, synthetic (baseline)", f"{base:,.0f}", "1.00x"])
    for name, size in (("alexnet_owt", 224), ("alexnet", 227)):
        m = create_model(name, init="kaiming").to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True)
        mc = torch.compile(m)
        x = torch.randn(b, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
        v = throughput(train_step(mc, opt, lambda x=x: x, True), b, args.seconds)
        rows.append([f"train: ours {name} bf16 + channels_last + compile, synthetic", f"{v:,.0f}", f"{v / base:.2f}x"])
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp), args.store_images)
        norm = Normalizer(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])).to(dev)
        aug = BatchAugment("paper", 224, norm, 0.1)
        aug.normalizer.eigval = torch.tensor([0.2175, 0.0188, 0.0045], device=dev)
        aug.normalizer.eigvec = torch.eye(3, device=dev)
        state = {"i": 0}

        def from_store():
            idx = torch.randint(0, len(store), (b,))
            x = store[idx].pin_memory().to(dev, non_blocking=True)
            state["i"] += 1
            return aug(x, keyed_random.keys(0, state["i"], idx)).contiguous(memory_format=torch.channels_last)

        m = create_model("alexnet_owt", init="kaiming").to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True)
        v = throughput(train_step(torch.compile(m), opt, from_store, True), b, args.seconds)
        rows.append(
            ["train: ours alexnet_owt from a prepared store (uint8 -> GPU aug)", f"{v:,.0f}", f"{v / base:.2f}x"]
        )
    tv.eval()
    with torch.inference_mode():
        ib = throughput(lambda: tv(x224), b, args.seconds / 2)
        rows.append(["inference: torchvision fp32 eager (baseline)", f"{ib:,.0f}", "1.00x"])
        m = create_model("alexnet_owt").to(dev).eval().to(memory_format=torch.channels_last).bfloat16()
        xb = x224.bfloat16().contiguous(memory_format=torch.channels_last)
        v = throughput(lambda: m(xb), b, args.seconds / 2)
        rows.append(["inference: ours bf16 weights + channels_last", f"{v:,.0f}", f"{v / ib:.2f}x"])
    print(f"{torch.cuda.get_device_name()}, batch {b}; matmul peak bf16 {matmul_peak(torch.bfloat16, 'cuda', 8192) / 1000:.0f} "
          f"TFLOP/s, tf32 {matmul_peak(torch.float32, 'cuda', 8192) / 1000:.0f} TFLOP/s")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
