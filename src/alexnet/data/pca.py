"""`alexnet pca-stats`: colour statistics of a training set, written where training finds them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .folder import FolderDataset, FolderIndex, default_workers, scan_folder
from .stats import STATS_FILENAME, ColourStats, compute_stats
from .store import is_store, open_store
from .transforms import resize_square


def run_pca_stats(
    data: str, out: Path | None, size: int = 256, max_images: int = 20000, workers: int = -1
) -> tuple[ColourStats, Path]:
    root = Path(data)
    out = out or root / STATS_FILENAME
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise UserError(f"cannot write {out}: directory not writable (choose another place with --out)")
    if is_store(root):
        images, _, _ = open_store(root, "train")
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:max_images].sort().values
        stats = compute_stats(
            (images[pick[i : i + 256]] for i in range(0, len(pick), 256)), f"{root} ({len(pick)} images)"
        )
        stats.save(out)
        return stats, out
    index = scan_folder(root / "train" if (root / "train").is_dir() else root, check=True)
    stats = folder_stats(index, size, max_images, workers)
    stats.save(out)
    return stats, out


def folder_stats(index: FolderIndex, size: int, max_images: int, workers: int = -1) -> ColourStats:
    """Statistics of a seeded random sample of at most ``max_images`` images, resized to ``size``."""
    n = len(index.samples)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_images].sort().values
    ds = FolderDataset(index, resize_square(size), size)
    subset = torch.utils.data.Subset(ds, pick.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=64, num_workers=default_workers(workers))

    def batches():
        for x, y, _ in loader:
            ok = y >= 0
            if ok.any():
                yield x[ok]

    return compute_stats(batches(), f"{index.root} ({len(pick)} of {n} images)")
