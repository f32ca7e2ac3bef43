"""The preprocessing contract between trained weights and everything that feeds them images.

One typed record travels with every set of weights (checkpoints, safetensors, ONNX metadata): how to resize,
which crop the network saw, and how pixels were normalised. Every consumer builds its normaliser from it with
``Preprocess.normalizer``; a new preprocessing option is one new field here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .stats import IMAGENET_MEAN, IMAGENET_STD, ColourStats
from .transforms import Normalizer


@dataclass(frozen=True)
class Preprocess:
    resize: int  # shorter side resized to this, centre square kept (paper §2)
    crop: int  # the network's input size (centre crop at test time)
    mean: tuple[float, float, float]  # channel mean, [0, 1] scale
    std: tuple[float, float, float]
    mean_image: torch.Tensor | None = None  # (3, S, S), [0, 1] scale: subtracted instead of mean/std (paper §2)

    def normalizer(self, stats: ColourStats | None = None) -> Normalizer:
        """uint8 -> network input. ``stats`` adds the PCA eigenpairs that training's colour noise needs."""
        mi = None if self.mean_image is None else torch.as_tensor(self.mean_image, dtype=torch.float32)
        eig = (None, None) if stats is None else (torch.tensor(stats.eigval, dtype=torch.float32),
                                                  torch.tensor(stats.eigvec, dtype=torch.float32))  # fmt: skip
        return Normalizer(torch.tensor(self.mean, dtype=torch.float32), torch.tensor(self.std, dtype=torch.float32),
                          mi, *eig)  # fmt: skip

    def to_meta(self) -> dict[str, Any]:
        """JSON-safe fields (the mean image travels as a tensor beside them)."""
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}

    def to_checkpoint(self) -> dict[str, Any]:
        return self.to_meta() | {"mean_image": None if self.mean_image is None else self.mean_image.cpu()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], mean_image: Any = None) -> Preprocess:
        """From ``to_meta``/``to_checkpoint`` output (checkpoints of every version carry these keys)."""
        mi = meta.get("mean_image", mean_image)
        return cls(int(meta["resize"]), int(meta["crop"]), _triple(meta["mean"]), _triple(meta["std"]),
                   None if mi is None else torch.as_tensor(np.asarray(mi), dtype=torch.float32))  # fmt: skip

    @classmethod
    def imagenet(cls, resize: int = 256, crop: int = 224) -> Preprocess:
        """torchvision's ImageNet evaluation transform: Resize(256), CenterCrop(224), ImageNet mean/std."""
        return cls(resize, crop, IMAGENET_MEAN, IMAGENET_STD)


def _triple(v: Any) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c
