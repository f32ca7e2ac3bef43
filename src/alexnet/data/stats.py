"""Dataset colour statistics for normalisation and PCA colour noise (`alexnet pca-stats`).

Streams over (a sample of) the training images at the training resolution and accumulates
the RGB mean, the 3x3 covariance and the per-pixel mean image, on the [0, 1] scale.
Stored as ``.npz`` (numpy reads it; loading never unpickles).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io.atomic import atomic_write

# ImageNet's colour statistics on the [0, 1] scale, the one home of these numbers: the channel mean and std
# every torchvision model uses, and the widely copied PCA values (fb.resnet.torch, from Krizhevsky's
# statistics): eigenvalues of the RGB covariance, eigenvectors as columns. This is compute_stats' convention
# too: on 250 real ILSVRC-2012 images (../shared/data/imagenet-samples, 128 px) it gives eigenvalues
# [0.187, 0.0166, 0.0037] and the same axes (tests/test_index.py), so the PCA noise has one scale whichever
# statistics a run uses.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
STATS_FILENAME = "alexnet-stats.npz"


@dataclass
class ColourStats:
    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)
    eigval: np.ndarray  # (3,), descending
    eigvec: np.ndarray  # (3, 3), eigenvectors as columns
    mean_image: np.ndarray | None  # (3, S, S) or None
    count: int  # images used
    source: str

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in ("mean", "std", "eigval", "eigvec")}
        if self.mean_image is not None:
            arrays["mean_image"] = self.mean_image.astype(np.float32)
        atomic_write(path, lambda f: np.savez(f, count=np.array(self.count), source=np.array(self.source), **arrays))

    @classmethod
    def load(cls, path: str | Path) -> ColourStats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    mean=z["mean"],
                    std=z["std"],
                    eigval=z["eigval"],
                    eigvec=z["eigvec"],
                    mean_image=z["mean_image"] if "mean_image" in z else None,
                    count=int(z["count"]),
                    source=str(z["source"]),
                )
        except FileNotFoundError:
            raise UserError(f"stats file not found: {path}") from None
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a stats file written by `alexnet pca-stats` ({e})") from None

    @classmethod
    def imagenet(cls) -> ColourStats:
        return cls(
            mean=np.array(IMAGENET_MEAN),
            std=np.array(IMAGENET_STD),
            eigval=np.array(IMAGENET_EIGVAL),
            eigvec=np.array(IMAGENET_EIGVEC),
            mean_image=None,
            count=0,
            source="imagenet defaults",
        )


def compute_stats(batches: Iterable[torch.Tensor], source: str) -> ColourStats:
    """``batches`` yield uint8 (B, 3, S, S) tensors of equal S."""
    n_img = 0
    n_px = 0
    s = torch.zeros(3, dtype=torch.float64)
    ss = torch.zeros(3, 3, dtype=torch.float64)
    img_sum: torch.Tensor | None = None
    for x in batches:
        xf = x.double().div_(255.0)  # (B, 3, S, S)
        img_sum = xf.sum(0) if img_sum is None else img_sum + xf.sum(0)
        px = xf.permute(1, 0, 2, 3).reshape(3, -1)  # (3, B*S*S)
        s += px.sum(1)
        ss += px @ px.T
        n_img += x.shape[0]
        n_px += px.shape[1]
    if n_img == 0 or img_sum is None:
        raise UserError(f"{source}: no images to compute statistics from")
    mean = s / n_px
    cov = ss / n_px - torch.outer(mean, mean)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    order = eigval.argsort(descending=True)
    eigvec = eigvec[:, order]
    eigvec = eigvec * torch.where(eigvec[0] > 0, -1.0, 1.0)  # sign convention of the ImageNet values
    return ColourStats(
        mean=mean.numpy(),
        std=cov.diagonal().clamp_min(1e-12).sqrt().numpy(),
        eigval=eigval[order].numpy(),
        eigvec=eigvec.numpy(),
        mean_image=(img_sum / n_img).float().numpy(),
        count=n_img,
        source=source,
    )
