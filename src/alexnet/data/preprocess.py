"""The preprocessing contract between trained weights and everything that feeds them images.

One typed record travels with every set of weights (checkpoints, safetensors, exports): how to resize,
which crop the network saw, and how pixels were normalised. Every consumer builds its normaliser from it with
``Preprocess.normalizer``; a new preprocessing option is one new field here. ``to_meta`` is what weights files
carry beside their tensors (the mean image travels as a tensor there); ``to_export`` is the self-contained
block of the export metadata (export_meta.py), the mean image included.
"""

from __future__ import annotations

import base64
import math
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

    def __post_init__(self) -> None:
        """What a weights file's metadata must hold to be used (read_weights turns this ValueError into a
        UserError naming the file)."""
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"crop {self.crop} / resize {self.resize}: need 1 <= crop <= resize")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean {list(self.mean)} / std {list(self.std)}: need finite values, std > 0")

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

    def mean_image_at_resize(self) -> torch.Tensor | None:
        """The mean image as the normaliser subtracts it: RGB, [0, 1] scale, resized (bilinear) to the
        ``resize`` x ``resize`` square the images are cut to; None in channel-mean mode."""
        if self.mean_image is None:
            return None
        return self.normalizer().mean_image_at((self.resize, self.resize)).contiguous()

    def to_export(self) -> dict[str, Any]:
        """The export metadata's ``preprocess`` block: channel mode carries mean/std, mean-image mode the mean
        image at the resize size (float32 little-endian, base64) and no mean/std, so neither can be misapplied."""
        out: dict[str, Any] = {"resize": self.resize, "crop": self.crop, "colour": "RGB", "scale": 1.0 / 255.0}
        mi = self.mean_image_at_resize()
        if mi is None:
            return out | {"normalize": "channel", "mean": list(self.mean), "std": list(self.std)}
        data = base64.b64encode(mi.numpy().astype("<f4").tobytes()).decode("ascii")
        image = {"shape": list(mi.shape), "dtype": "float32", "byte_order": "little", "base64": data}
        return out | {"normalize": "mean_image", "mean_image": image}

    @classmethod
    def from_export(cls, block: dict[str, Any]) -> Preprocess:
        """From ``to_export`` output; ValueError/KeyError/TypeError on a malformed block (the caller names the file)."""
        if block.get("colour", "RGB") != "RGB" or abs(float(block.get("scale", 1 / 255)) * 255 - 1) > 1e-6:
            raise ValueError("preprocess: only RGB pixels scaled by 1/255 are known")
        resize, crop = int(block["resize"]), int(block["crop"])
        if block["normalize"] == "channel":
            return cls(resize, crop, _triple(block["mean"]), _triple(block["std"]))
        if block["normalize"] != "mean_image":
            raise ValueError(f"preprocess: unknown normalize {block['normalize']!r}")
        image = block["mean_image"]
        shape = tuple(int(v) for v in image["shape"])
        if image.get("dtype") != "float32" or image.get("byte_order") != "little" or len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"preprocess: mean_image must be little-endian float32 (3, H, W), got {shape}")
        values = np.frombuffer(base64.b64decode(image["base64"], validate=True), dtype="<f4")
        mi = torch.from_numpy(values.reshape(shape).astype(np.float32))
        return cls(resize, crop, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), mi)

    @classmethod
    def imagenet(cls, resize: int = 256, crop: int = 224) -> Preprocess:
        """torchvision's ImageNet evaluation transform: Resize(256), CenterCrop(224), ImageNet mean/std."""
        return cls(resize, crop, IMAGENET_MEAN, IMAGENET_STD)


def _triple(v: Any) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c
