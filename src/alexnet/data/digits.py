"""The built-in dataset: scikit-learn's bundled handwritten digits, no download.

1,797 real 8x8 greyscale scans (UCI "Optical Recognition of Handwritten Digits"), 10 classes.
Each is upscaled (bilinear) to ``size`` x ``size`` and copied to 3 channels so AlexNet can eat it;
the train/val split is stratified and fixed by ``seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

CLASS_NAMES = [str(d) for d in range(10)]


def load_digits_split(size: int, val_fraction: float = 0.2, seed: int = 0) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)
    y = torch.from_numpy(d.target).long()
    tr, va = split_indices(y, val_fraction, seed)
    if not len(tr) or not len(va):  # (an empty validation set once gave "val top-1 0.00%" as if measured)
        empty = "training" if not len(tr) else "validation"
        raise UserError(f"data.val_fraction {val_fraction} leaves no {empty} images of the built-in digits "
                        f"({len(y):,} in all); use a value such as 0.2")  # fmt: skip
    return {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va]}


def split_indices(y: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified: the same share of every digit held out; fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
