"""One GPU, one command, under 5 minutes: training images/s on synthetic batches and through the real
training engine from a prepared store, inference images/s, bf16; torchvision's AlexNet in fp32 eager
with a plain loop is the baseline, measured in the same run.

    python benchmarks/gpu.py [--batch 512] [--seconds 5] [--store-images 30000] [--json results.json]

The store is synthetic (random uint8 images at 256x256 in a temporary directory, 1000 classes, no
dataset needed) and is read by `alexnet.train.train` exactly as `alexnet train --data STORE` reads a
real one: a read per image -> pinned batches on threads -> GPU crop/flip/colour noise -> model.
`--device cpu --tiny` runs every section at toy sizes (a check of the script itself, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak, table  # noqa: E402

from alexnet import create_model  # noqa: E402
from alexnet.config import apply_overrides, load_recipe  # noqa: E402
from alexnet.data.loaders import build_data  # noqa: E402
from alexnet.data.stats import STATS_FILENAME, ColourStats  # noqa: E402
from alexnet.engine.setup import resolve_config  # noqa: E402
from alexnet.train import train  # noqa: E402

ROWS: list[list[str]] = [["measurement", "img/s", "vs baseline"]]
RESULTS: dict[str, float] = {}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def throughput(step: Callable[[], object], batch: int, seconds: float, dev: torch.device, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
    sync(dev)
    return n / (time.perf_counter() - t0)


def record(name: str, value: float, base: float | None) -> None:
    RESULTS[name] = value
    ROWS.append([name, f"{value:,.0f}", f"{value / base:.2f}x" if base else "1.00x"])
    print(f"  {name}: {value:,.0f} img/s" + (f" ({value / base:.2f}x)" if base else ""), flush=True)


def section(title: str, fn: Callable[[], None]) -> None:
    """A failing section prints its traceback and the script goes on: one device run, all the numbers."""
    print(f"== {title}", flush=True)
    t = time.perf_counter()
    try:
        fn()
    except Exception:
        traceback.print_exc()
        ROWS.append([f"{title}: FAILED (see log)", "-", "-"])
    print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool):
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def synthetic_store(root: Path, n_train: int, n_val: int, size: int = 256, classes: int = 1000) -> Path:
    """A store in `alexnet prepare`'s layout holding random images (a random block, tiled: fast to write)."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=(min(256, n_train), 3, size, size), dtype=np.uint8)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        arr = np.memmap(root / f"{split}.u8", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        for i in range(0, n, len(block)):
            arr[i : i + len(block)] = block[: n - i]
        del arr
        np.save(root / f"{split}.labels.npy", rng.integers(0, classes, size=n).astype(np.int64))
        splits[split] = {"count": n, "count_written": n, "done": n, "written": n, "failed": []}
    manifest = {"version": 1, "size": size, "format": "raw", "quality": 90, "complete": True,
                "classes": [f"class{i:04d}" for i in range(classes)], "splits": splits}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    ColourStats.imagenet().save(root / STATS_FILENAME)  # skip computing stats from random pixels
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per synthetic measurement")
    ap.add_argument("--store-images", type=int, default=30_000)
    ap.add_argument("--epochs", type=int, default=3, help="engine runs: epochs over the store (first = warm-up)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="alexnet_owt,alexnet", help="ours, in the synthetic section")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: check the script on a CPU")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    shm = Path("/dev/shm")
    ap.add_argument("--tmp", default=str(shm) if shm.is_dir() else None,
                    help="where the store and runs go (default /dev/shm: the page cache, as a warm store is)")  # fmt: skip
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --device cpu --tiny to check the script)")
    if args.tiny:
        args.batch, args.seconds, args.store_images, args.epochs = 8, 0.2, 64, 2
    import torchvision

    b = args.batch
    size_note = ""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        size_note = (
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}; matmul peak bf16 "
            f"{matmul_peak(torch.bfloat16, 'cuda', 8192) / 1000:.0f} TFLOP/s, fp32 (tf32 off) "
            f"{matmul_peak(torch.float32, 'cuda', 8192) / 1000:.0f} TFLOP/s"
        )
        print(size_note, flush=True)
    y = torch.randint(0, 1000, (b,), device=dev)
    base: dict[str, float] = {}

    def synthetic() -> None:
        tv = torchvision.models.alexnet().to(dev)
        x = torch.randn(b, 3, 224, 224, device=dev)
        opt = torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9)
        base["train"] = throughput(train_step(tv, opt, x, y, False), b, args.seconds, dev)
        record("train, synthetic: torchvision alexnet fp32 eager (baseline)", base["train"], None)
        del tv, opt
        for name in args.models.split(","):
            size = 227 if name == "alexnet" else 224
            for compiled in (False, True):
                m = create_model(name, init="kaiming").to(dev).to(memory_format=torch.channels_last)
                opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True)
                xs = torch.randn(b, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
                t = time.perf_counter()
                mm = torch.compile(m) if compiled else m
                v = throughput(train_step(mm, opt, xs, y, True), b, args.seconds, dev, warmup=3)
                tag = " + compile" if compiled else ""
                record(f"train, synthetic: ours {name} bf16 + channels_last{tag}", v, base["train"])
                if compiled:
                    print(f"   compile + warm-up {time.perf_counter() - t - args.seconds:.0f} s", flush=True)
                del m, opt, mm

    def engine(store: Path, aug: str, compiled: bool) -> None:
        cfg = apply_overrides(load_recipe("torchvision"), [
            f"data.path={store}", f"data.train_aug={aug}", f"train.epochs={args.epochs}", f"train.batch_size={b}",
            "train.amp=bf16", "train.channels_last=true", f"train.compile={str(compiled).lower()}",
            f"train.device={args.device}", "schedule.name=constant", "train.log_every=0", "data.pca_noise=0.1",
            "train.keep_last=1",
        ])  # fmt: skip
        with tempfile.TemporaryDirectory(dir=args.tmp) as run:
            t = time.perf_counter()
            res = train(cfg, Path(run) / "run", verbose=False)
            wall = time.perf_counter() - t
        ips = [r["images_per_sec"] for r in res.history]
        print(f"   per-epoch training img/s {[round(v) for v in ips]}, wall {wall:.0f} s", flush=True)
        tag = ("paper crop+flip" if aug == "paper" else "RandomResizedCrop") + (", compile" if compiled else "")
        record(f"train, `alexnet train` engine from a store ({tag})", max(ips[1:] or ips), base.get("train"))

    def input_only(store: Path) -> None:
        """The loader alone, two passes over the store each (the first maps the pages), per read method
        and number of gather threads."""
        cfg = apply_overrides(load_recipe("torchvision"), [f"data.path={store}", f"train.batch_size={b}"])
        for read in ("mmap", "pread"):
            for threads in (1, 4):
                data = build_data(resolve_config(cfg, dev), pin_memory=dev.type == "cuda")
                batches = data.train
                assert batches is not None
                batches.source.x.read = read  # type: ignore[union-attr]
                batches.gather_threads, batches.prefetch_depth = threads, 2 * threads + 2
                for epoch in (0, 1):
                    n, t = 0, time.perf_counter()
                    for x, yy, idx in batches.epoch(epoch):
                        x, yy, idx = (v.to(dev, non_blocking=True) for v in (x, yy, idx))
                        n += len(x)
                    sync(dev)
                    record(f"input only: store ({read}, {threads} thread(s), pass {epoch + 1}) -> pinned -> GPU",
                           n / (time.perf_counter() - t), None)  # fmt: skip

    def inference() -> None:
        tv = torchvision.models.alexnet().to(dev).eval()
        m = create_model("alexnet_owt").to(dev).eval().to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for bs in (b, 1):
                x = torch.randn(bs, 3, 224, 224, device=dev)
                xb = x.contiguous(memory_format=torch.channels_last)
                ib = throughput(lambda x=x: tv(x), bs, args.seconds / 2, dev)
                record(f"inference batch {bs}: torchvision fp32 eager (baseline)", ib, None)

                def ours(xb: torch.Tensor = xb) -> torch.Tensor:
                    with torch.autocast(dev.type, dtype=torch.bfloat16):
                        return m(xb)

                record(f"inference batch {bs}: ours bf16 autocast + channels_last", throughput(ours, bs, args.seconds / 2, dev), ib)  # fmt: skip
                mb = create_model("alexnet_owt").to(dev).eval().to(memory_format=torch.channels_last).bfloat16()
                xbb = xb.bfloat16()
                v = throughput(lambda mb=mb, xbb=xbb: mb(xbb), bs, args.seconds / 2, dev)
                record(f"inference batch {bs}: ours bf16 weights + channels_last", v, ib)

    section("synthetic training steps", synthetic)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        store = synthetic_store(Path(tmp), args.store_images, max(64, args.store_images // 50))
        print(f"synthetic store: {args.store_images} images in {time.perf_counter() - t:.0f} s", flush=True)
        section("input pipeline alone", lambda: input_only(store))
        section("engine: paper crop+flip, compiled", lambda: engine(store, "paper", True))
        section("engine: paper crop+flip, eager", lambda: engine(store, "paper", False))
        section("engine: RandomResizedCrop, compiled", lambda: engine(store, "modern", True))
    section("inference", inference)
    print()
    print(size_note or f"device {dev}")
    print(f"batch {b}; engine rows: best epoch after the first of {args.epochs} over {args.store_images} images")
    print(table(ROWS))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": size_note, "batch": b, "results": RESULTS}, indent=1))


if __name__ == "__main__":
    main()
