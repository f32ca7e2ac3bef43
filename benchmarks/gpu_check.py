"""The GPU figures docs/results.md needs, in one run of at most five minutes on one H100/H200 (scripts/gpu_check.sh
runs it, with the command-line checks). Every section prints its lines and PASS or FAIL; a failing section
prints its traceback and the run goes on. The exit code is the number of failed sections.

    python benchmarks/gpu_check.py [--device cuda] [--dry-run] [--only SECTION,...]

Sections: training steps of the three networks (eager and compiled, bf16 + channels_last; torchvision's AlexNet
in fp32 eager the baseline, same run), the GPU LRN (benchmarks/lrn.py --check), a store -> GPU epoch end to
end (CPU JPEG decode and data.jpeg_decode=gpu; raw store), the engine's host overhead and its host-device syncs
on the device (torch.cuda.set_sync_debug_mode counts them), two train.deterministic runs bit for bit and a
resume against the uninterrupted run, and evaluate's images/s. Data is made here (synthetic stores): the device
machine has no datasets. `--dry-run`: every section at toy size on the CPU (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak, table  # noqa: E402

from alexnet import create_model  # noqa: E402
from alexnet.commands.train import train  # noqa: E402
from alexnet.config import apply_overrides, load_recipe  # noqa: E402
from alexnet.data.stats import STATS_FILENAME, ColourStats  # noqa: E402
from alexnet.engine.tuning import native_bf16  # noqa: E402

ROWS: list[list[str]] = [["measurement", "value", "vs baseline"]]
FAILED: list[str] = []


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


def record(name: str, value: float, base: float | None, unit: str = "img/s") -> None:
    ROWS.append([name, f"{value:,.1f} {unit}", f"{value / base:.2f}x" if base else "-"])
    print(f"  {name}: {value:,.1f} {unit}" + (f" ({value / base:.2f}x)" if base else ""), flush=True)


def section(title: str, fn: Callable[[], None]) -> None:
    print(f"== {title}", flush=True)
    t = time.perf_counter()
    try:
        fn()
        print(f"PASS {title} ({time.perf_counter() - t:.0f} s)", flush=True)
    except Exception:  # noqa: BLE001 - one device run, every number: report and go on
        traceback.print_exc()
        FAILED.append(title)
        ROWS.append([f"{title}: FAILED (see log)", "-", "-"])
        print(f"FAIL {title} ({time.perf_counter() - t:.0f} s)", flush=True)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool):
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def synthetic_store(root: Path, n_train: int, n_val: int, size: int, classes: int, fmt: str = "raw") -> Path:
    """A store in `alexnet prepare`'s layout holding random images (raw), or made by `alexnet prepare` itself
    from a folder of random JPEGs (jpeg)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "jpeg":
        from PIL import Image

        from alexnet.data.store import prepare

        folder, classes = root.parent / f"{root.name}-folder", min(classes, n_train, n_val)  # all in both splits
        block = rng.integers(0, 256, size=(16, size, size, 3), dtype=np.uint8)
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                d = folder / split / f"class{i % classes:04d}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(block[i % 16]).save(d / f"{i}.jpg", quality=90)
        prepare(str(folder), str(root), size, "jpeg", 90, 4)
        ColourStats.imagenet().save(root / STATS_FILENAME)
        return root
    block = rng.integers(0, 256, size=(min(256, n_train), 3, size, size), dtype=np.uint8)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        arr = np.memmap(root / f"{split}.u8", mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        for i in range(0, n, len(block)):
            arr[i : i + len(block)] = block[: n - i]
        del arr
        np.save(root / f"{split}.labels.npy", rng.integers(0, classes, size=n).astype(np.int64))
        (root / f"{split}.files.json").write_text(json.dumps([f"{split}/{i}.jpg" for i in range(n)]))
        splits[split] = {"count": n, "count_written": n, "done": n, "written": n, "failed": []}
    manifest = {"version": 1, "size": size, "format": "raw", "quality": 90, "complete": True,
                "classes": [f"class{i:04d}" for i in range(classes)], "splits": splits}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    ColourStats.imagenet().save(root / STATS_FILENAME)  # skip computing stats from random pixels
    return root


class Check:
    """The sections, sized by ``args`` (toy sizes on the CPU with --dry-run)."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a, self.tmp, self.dev = args, tmp, torch.device(args.device)
        dry = args.dry_run
        self.batch, self.seconds = (4, 0.2) if dry else (256, 3.0)
        self.size = 72 if dry else 256
        self.crop = ["--set", "data.crop=67"] if dry else []
        self.images = 48 if dry else 20_000
        self.base = 0.0

    def run(self, *argv: str, **kw: object) -> object:
        return train(self.cfg(*argv), self.tmp / f"run-{time.monotonic_ns()}", verbose=False, **kw)  # type: ignore[arg-type]

    def cfg(self, *sets: str):  # noqa: ANN201
        extra = ["data.crop=67", "model.name=alexnet_owt"] if self.a.dry_run else []
        return apply_overrides(load_recipe("torchvision"), [f"train.device={self.a.device}", *extra, *sets])

    def train_steps(self) -> None:
        import torchvision

        b, dev = self.batch, self.dev
        y = torch.randint(0, 1000, (b,), device=dev)
        side = 67 if self.a.dry_run else None
        tv = torchvision.models.alexnet().to(dev)
        x = torch.randn(b, 3, side or 224, side or 224, device=dev)
        opt = torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9)
        self.base = throughput(train_step(tv, opt, x, y, False), b, self.seconds, dev)
        record("train step: torchvision alexnet fp32 eager (baseline)", self.base, None)
        del tv, opt
        # bf16 on the GPU; in a dry run only where the CPU has it natively (emulated, a toy step took 3 s on a
        # 2-core AVX2 EPYC, 0.1 s in fp32)
        amp = self.dev.type == "cuda" or native_bf16(self.dev)
        kind = "bf16" if amp else "fp32"
        for name in ("alexnet_owt", "alexnet", "alexnet_bn"):
            size = side or (227 if name != "alexnet_owt" else 224)
            for compiled in (False, True) if name == "alexnet_owt" or not self.a.dry_run else (False,):  # (CPU: slow)
                m = create_model(name, init="kaiming").to(dev).to(memory_format=torch.channels_last)
                opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, fused=True)
                xs = torch.randn(b, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
                t = time.perf_counter()
                mm = torch.compile(m, backend="aot_eager" if self.a.dry_run else "inductor") if compiled else m
                v = throughput(train_step(mm, opt, xs, y, amp), b, self.seconds, dev, warmup=3)
                record(f"train step: {name} {kind} + channels_last{' + compile' if compiled else ''}", v, self.base)
                if compiled:
                    print(f"   compile and warm-up {time.perf_counter() - t - self.seconds:.0f} s", flush=True)
                del m, opt, mm

    def lrn(self) -> None:
        cmd = [sys.executable, str(Path(__file__).parent / "lrn.py"), "--device", self.a.device, "--check"]
        # the net's timing at 2 steps, 1 round: 20 steps x 3 rounds took 40 s on a 2-core AVX2 EPYC
        dry = ["--batch", "2", "--iters", "1", "--steps", "2", "--rounds", "1"]
        res = subprocess.run(cmd + (dry if self.a.dry_run else []), text=True,
                             capture_output=True, timeout=600)  # fmt: skip
        print(res.stdout + res.stderr, flush=True)
        if res.returncode:
            raise RuntimeError(f"benchmarks/lrn.py --check exited {res.returncode}")

    def store_epochs(self) -> None:
        b = self.batch
        for fmt, decode in (("raw", "cpu"), ("jpeg", "cpu"), ("jpeg", "gpu")):
            if decode == "gpu" and self.dev.type != "cuda":
                print("   jpeg_decode=gpu: needs a CUDA device (skipped on the CPU)")
                continue
            store = self.tmp / f"store-{fmt}"
            if not store.is_dir():
                t = time.perf_counter()
                synthetic_store(store, self.images, max(64, self.images // 50), self.size, 1000, fmt)
                print(f"   {fmt} store of {self.images} images made in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            res = self.run(f"data.path={store}", "train.epochs=2", f"train.batch_size={b}", f"data.jpeg_decode={decode}",
                           "schedule.name=constant", "train.log_every=0", "train.keep_last=1", "data.train_aug=paper")  # fmt: skip
            ips = [r["images_per_sec"] for r in res.history]  # type: ignore[attr-defined]
            print(f"   per-epoch img/s {[round(v) for v in ips]}, wall {time.perf_counter() - t:.0f} s", flush=True)
            record(f"store -> GPU epoch, `alexnet train` ({fmt}, {decode} decode)", ips[-1], self.base or None)

    def host(self) -> None:
        """The engine's host path on the device (benchmarks/host_overhead.py), and its syncs counted by CUDA."""
        cmd = [sys.executable, str(Path(__file__).parent / "host_overhead.py"), "--device", self.a.device,
               "--worlds", "1", "8", "--batches", "256"] + (["--steps", "10", "--rounds", "1"] if self.a.dry_run else [])  # fmt: skip
        res = subprocess.run(cmd, text=True, capture_output=True, timeout=600)
        print(res.stdout + res.stderr, flush=True)
        if res.returncode:
            raise RuntimeError(f"benchmarks/host_overhead.py exited {res.returncode}")
        if self.dev.type != "cuda":
            print("   syncs: counted on CUDA only (torch.cuda.set_sync_debug_mode)")
            return
        store = self.tmp / "store-raw"
        steps = 200
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                self.run(f"data.path={store}", "train.epochs=1", f"train.max_steps={steps}", f"train.batch_size={self.batch}",
                         "train.log_every=20", "train.eval_every=0")  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in seen if "synchroniz" in str(w.message).lower()]
        record(f"host-device syncs in a {steps}-step run, validation and saves included", len(syncs), None, "syncs")

    def deterministic(self) -> None:
        ep = [
            "train.deterministic=true",
            "train.compile=false",
            "train.batch_size=16",
            "data.path=" + str(self.tmp / "store-raw"),
        ]
        a, b = self.run(*ep, "train.epochs=2"), self.run(*ep, "train.epochs=2")
        part = self.run(*ep, "train.epochs=1")
        from alexnet.commands.train import run_train

        assert run_train(resume=str(part.run_dir), overrides=["train.epochs=2"]) == 0  # type: ignore[attr-defined]
        load = lambda r: torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]  # noqa: E731
        wa, wb, wr = load(a), load(b), load(part)
        same = [k for k in wa if torch.equal(wa[k], wb[k])]
        resumed = [k for k in wa if torch.equal(wa[k], wr[k])]
        print(f"   deterministic: {len(same)}/{len(wa)} tensors bit for bit; resumed: {len(resumed)}/{len(wa)}")
        if len(same) != len(wa) or len(resumed) != len(wa):
            raise AssertionError("train.deterministic runs or the resumed run differ")

    def evaluate(self) -> None:
        from alexnet.commands.evaluate import run_evaluate

        run = self.run(f"data.path={self.tmp / 'store-raw'}", "train.epochs=1", "train.max_steps=2",
                       f"train.batch_size={self.batch}")  # fmt: skip
        n = max(64, self.images // 50)
        t = time.perf_counter()
        assert run_evaluate(str(run.run_dir), batch_size=self.batch, device=self.a.device, as_json=True) == 0  # type: ignore[attr-defined]
        record("evaluate (store, centre crop, auto amp)", n / (time.perf_counter() - t), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="every section at toy size on the CPU")
    ap.add_argument("--only", help="comma-separated sections")
    args = ap.parse_args()
    if args.dry_run:
        args.device = "cpu"
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu_check.py needs a CUDA GPU (or --dry-run)")
        torch.backends.cudnn.benchmark = True
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; matmul peak bf16 "
              f"{matmul_peak(torch.bfloat16, 'cuda', 8192) / 1000:.0f} TFLOP/s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        check = Check(args, Path(tmp))
        names = ["train_steps", "lrn", "store_epochs", "host", "deterministic", "evaluate"]
        for name in args.only.split(",") if args.only else names:
            if name in ("host", "deterministic", "evaluate") and not (Path(tmp) / "store-raw").is_dir():
                synthetic_store(Path(tmp) / "store-raw", check.images, max(64, check.images // 50), check.size, 1000)
            section(name, getattr(check, name))
    print()
    print(table(ROWS))
    print(f"{len(FAILED)} section(s) failed" + (f": {', '.join(FAILED)}" if FAILED else ""))
    sys.exit(len(FAILED))


if __name__ == "__main__":
    main()
