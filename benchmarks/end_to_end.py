"""End to end on Imagenette: ours vs a pytorch/examples-style loop, same model, batch, epochs, seed.

    python benchmarks/end_to_end.py [--data ../shared/data/imagenette2-224] [--epochs 1] [--batch 128]

Baseline (pytorch/examples imagenet/main.py habits): torchvision ImageFolder, RandomResizedCrop(224)
+ flip + ToTensor + Normalize per image in DataLoader workers, torchvision alexnet, fp32 eager,
torch SGD (foreach), centre-crop validation.
Ours: `alexnet train` on a prepared store (made once before timing; its cost is printed too),
alexnet_owt (the same network), RandomResizedCrop on the uint8 batch, bf16 autocast, channels_last,
fused SGD. Both: SGD lr 0.01, momentum 0.9, wd 1e-4, constant lr, seed 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

from alexnet.commands.train import train  # noqa: E402
from alexnet.config import apply_overrides, load_recipe  # noqa: E402
from alexnet.data.store import prepare  # noqa: E402


def baseline(data: Path, epochs: int, batch: int, workers: int) -> tuple[float, float]:
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    tr = torchvision.datasets.ImageFolder(str(data / "train"), T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]))  # fmt: skip
    va = torchvision.datasets.ImageFolder(str(data / "val"), T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))  # fmt: skip
    tl = torch.utils.data.DataLoader(tr, batch, shuffle=True, num_workers=workers)
    vl = torch.utils.data.DataLoader(va, batch, num_workers=workers)
    model = torchvision.models.alexnet(num_classes=len(tr.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    t0 = time.perf_counter()
    for _ in range(epochs):  # like main.py: train, then validate, every epoch
        model.train()
        for x, y in tl:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in vl:
                correct += (model(x).argmax(1) == y).sum().item()
                n += len(y)
    return (time.perf_counter() - t0) / epochs, correct / n


def ours(store: Path, epochs: int, batch: int, out: Path) -> tuple[float, float]:
    cfg = apply_overrides(load_recipe("torchvision"), [
        f"data.path={store}", f"train.epochs={epochs}", f"train.batch_size={batch}", "schedule.name=constant",
        "train.amp=bf16", "train.channels_last=true", "train.seed=0", "train.log_every=0",
    ])  # fmt: skip
    res = train(cfg, out, verbose=False)
    rows = res.history
    ips = sum(r["images_per_sec"] for r in rows) / len(rows)
    print(f"ours: training steps alone ran at {ips:.1f} img/s (s/epoch below includes validation)")
    return sum(r["seconds"] for r in rows) / len(rows), rows[-1]["val_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette2-224"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "train").is_dir():
        sys.exit(f"no ImageFolder at {data}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        prepare(str(data), str(Path(tmp) / "store"), size=256, workers=args.workers, progress=False)
        prep = time.perf_counter() - t
        ours_s, ours_acc = ours(Path(tmp) / "store", args.epochs, args.batch, Path(tmp) / "run")
    base_s, base_acc = baseline(data, args.epochs, args.batch, args.workers)
    print(f"Imagenette, {args.epochs} epoch(s), batch {args.batch}, seed 0, {torch.get_num_threads()} threads; "
          f"`alexnet prepare` (once): {prep:.0f} s")  # fmt: skip
    print(table([
        ["pipeline", "s / epoch", "speed-up", "val top-1"],
        ["pytorch/examples-style loop, fp32 (baseline)", f"{base_s:.0f}", "1.00x", f"{100 * base_acc:.1f} %"],
        ["ours: store + bf16 + channels_last + fused SGD", f"{ours_s:.0f}", f"{base_s / ours_s:.2f}x", f"{100 * ours_acc:.1f} %"],
    ]))  # fmt: skip
    print("(s / epoch: training plus the validation pass, for both)")


if __name__ == "__main__":
    main()
