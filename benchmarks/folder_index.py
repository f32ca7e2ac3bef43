"""From an ImageNet-shaped folder to the first training step: the folder index (src/alexnet/data/index.py)
against torchvision's ImageFolder, cold and cached, and `alexnet train` start-up with 1 and 2 processes, each
beside the same start on a tiny folder (the fixed cost of imports, model and first step).

    python benchmarks/folder_index.py                      # 1,000 classes x 100 JPEGs = 100,000 files
    python benchmarks/folder_index.py --per-class 20       # smaller

The tree is written once under --root (reused when complete): small real JPEGs in class folders named by
ImageNet wnids (so the run uses ImageNet's colour statistics, as an ImageNet user's run does), a few val images
per class. "Cold" is the first listing with no index cached (the page cache is warm: the tree was just
written); "warm" reads the cached index. Start-up is measured to the first training step's forward pass,
in a fresh process (`python -m alexnet train`, torchrun for 2), as wall time from process start, with ImageNet's
colour statistics (data.normalize=channel): a run that must compute statistics (the paper recipe's mean image)
pays that once per run, ~7 s for 5,000 images on this machine, and reads its stats.npz on resume.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

HOOK = """
import os, sys, time
t0 = float(os.environ["T0"])
import alexnet.engine.epoch as epoch
real = epoch.optimizer_step
def first(*a, **k):
    print(f"FIRST_STEP {time.time() - t0:.3f}", flush=True)
    os._exit(0)
epoch.optimizer_step = first
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_tree(root: Path, classes: int, per_class: int, val_per_class: int) -> Path:
    from alexnet.data.classes import imagenet_classes

    done = root / f".complete-{classes}x{per_class}"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        blobs.append(buf.getvalue())
    wnids = [w for w, _ in imagenet_classes()][:classes]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, w in enumerate(wnids):
            d = root / split / w
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{w}_{i}.JPEG").write_bytes(blobs[(c + i) % len(blobs)])
    done.touch()
    return root


def timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def start_up(data: Path, out: Path, nproc: int) -> float:
    """Seconds from process start to the first training step's forward pass (the slowest rank)."""
    flags = "--model alexnet --epochs 1 --batch-size 8 --set data.resize=72 --set data.crop=67 --set data.workers=0"
    flags += " --set train.amp=none --set data.normalize=channel"  # ImageNet's colour statistics
    args = ["train", "--data", str(data), "--out", str(out), *flags.split()]
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, T0=repr(time.time()), OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    if nproc == 1:
        cmd = [sys.executable, "-c", HOOK, *args]
    else:
        hook = out.parent / "first_step_hook.py"
        hook.write_text(HOOK)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=29561",
               str(hook), *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    times = [float(x) for x in re.findall(r"FIRST_STEP ([0-9.]+)", res.stdout)]
    if len(times) != nproc:
        raise SystemExit(f"start-up run failed:\n{res.stderr[-3000:]}")
    return max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/alexnet-imagenet-shaped")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=100)
    args = ap.parse_args()
    from torchvision.datasets import ImageFolder

    from alexnet.data import index
    from alexnet.data.folder import scan_folder

    t = timed(lambda: write_tree(Path(args.root), args.classes, args.per_class, 2))
    tree, n = Path(args.root), args.classes * args.per_class
    tiny = write_tree(Path(args.root + "-tiny"), 10, 4, 2)
    print(f"tree: {args.classes} classes x {args.per_class} = {n:,} training files ({t:.1f}s to make or reuse)")
    time.sleep(index.RACY_NS / 1e9 + 0.5)  # a dataset older than the index's racy window, as any real one is
    for p in [*index.cache_paths(tree / "train"), *index.cache_paths(tree / "val")]:
        p.unlink(missing_ok=True)
    base = timed(lambda: ImageFolder(str(tree / "train")))
    cold = timed(lambda: scan_folder(tree / "train", check=False))
    warm = timed(lambda: scan_folder(tree / "train", check=False))
    scan_folder(tree / "val", check=False)
    runs = Path(args.root + "-runs")
    runs.mkdir(exist_ok=True)
    starts = {(name, k): start_up(data, runs / f"{name}{k}", k) for name, data in (("tiny", tiny), ("tree", tree))
              for k in (1, 2)}  # fmt: skip
    rows = [["measure", "seconds", "target (2-core machine)"],
            ["torchvision ImageFolder(train) (baseline)", f"{base:.2f}", ""],
            ["our index, cold (listed, cached)", f"{cold:.2f}", f"<= 3 x baseline + 3 = {3 * base + 3:.1f}"],
            ["our index, warm (cached)", f"{warm:.2f}", "<= 2"]]  # fmt: skip
    for k in (1, 2):
        extra = starts[("tree", k)] - starts[("tiny", k)]
        rows.append([f"train start to first step, {k} process(es): tiny folder", f"{starts[('tiny', k)]:.2f}", ""])
        rows.append(["  same on the tree (index cached): above the tiny start", f"{extra:.2f}", ""])
    one, two = (starts[("tree", k)] - starts[("tiny", k)] for k in (1, 2))
    rows.append(
        [
            "2 processes vs 1 (tree, above tiny)",
            f"{two:.2f} vs {one:.2f}",
            f"<= 1.3 x {one:.2f} + 1 = {1.3 * one + 1:.1f}",
        ]
    )
    print(table(rows))
    per_file = cold / n
    print(
        f"extrapolated to ImageNet's 1,281,167 files: cold index {per_file * 1_281_167:.0f}s once, warm "
        f"{warm / n * 1_281_167:.1f}s per start (linear in files; measured on this machine's local disk)"
    )


if __name__ == "__main__":
    main()
