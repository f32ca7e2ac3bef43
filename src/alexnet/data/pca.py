"""`alexnet pca-stats`: colour statistics of a training set, written where training finds them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import UserError
from ..io.atomic import check_output
from .folder import FolderDataset, FolderIndex, default_workers, scan_folder
from .keyed_random import seeded_sample
from .stats import STATS_FILENAME, ColourStats, compute_stats
from .store import is_store, open_store
from .transforms import resize_square


def run_pca_stats(data: str, out: Path | None, size: int = 256, max_images: int = 20000, workers: int = -1,
                  force: bool = False) -> int:  # fmt: skip
    """`alexnet pca-stats`: compute, write, and print the statistics."""
    if not Path(data).exists():  # before the output check, which would name DATA as a missing output directory
        raise UserError(f"data path not found: {data}")
    if out is not None and out.suffix != ".npz":  # (numpy's archive, whatever the name says)
        raise UserError(f"--out must name a .npz file, got {out}")
    check_output(out or Path(data) / STATS_FILENAME, force)
    stats, path = pca_stats(data, out, size, max_images, workers)
    print(f"wrote {path} from {stats.count} images")
    print(f"  mean     {', '.join(f'{v:.4f}' for v in stats.mean)}")
    print(f"  std      {', '.join(f'{v:.4f}' for v in stats.std)}")
    print(f"  eigval   {', '.join(f'{v:.4f}' for v in stats.eigval)}")
    for row in stats.eigvec:
        print(f"  eigvec   {', '.join(f'{v:+.4f}' for v in row)}")
    return 0


def pca_stats(
    data: str, out: Path | None, size: int = 256, max_images: int = 20000, workers: int = -1
) -> tuple[ColourStats, Path]:
    root = Path(data)
    out = out or root / STATS_FILENAME
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise UserError(f"cannot write {out}: directory not writable (choose another place with --out)")
    if is_store(root):
        images, _, _ = open_store(root, "train")
        pick = seeded_sample(len(images), max_images)
        stats = compute_stats(
            (images[pick[i : i + 256]] for i in range(0, len(pick), 256)), f"{root} ({len(pick)} images)"
        )
        stats.save(out)
        return stats, out
    index = scan_folder(root / "train" if (root / "train").is_dir() else root, check=False)  # bad files: at decode
    stats = folder_stats(index, size, max_images, workers)
    stats.save(out)
    return stats, out


def folder_stats(index: FolderIndex, size: int, max_images: int, workers: int = -1) -> ColourStats:
    """Statistics of a seeded random sample of at most ``max_images`` images, resized to ``size``."""
    n = len(index.samples)
    pick = seeded_sample(n, max_images)
    ds = FolderDataset(index, resize_square(size), size)
    subset = torch.utils.data.Subset(ds, pick.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=64, num_workers=default_workers(workers))

    def batches() -> Iterator[torch.Tensor]:
        from ..engine.progress import Progress

        progress = Progress(len(loader), "colour statistics", True, every=max(1, len(loader) // 10))
        for x, y, _ in loader:
            ok = y >= 0
            progress.update()
            if ok.any():
                yield x[ok]
        progress.close()

    return compute_stats(batches(), f"{index.root} ({len(pick)} of {n} images)")
