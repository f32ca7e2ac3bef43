"""Image transforms: per-image resizing (workers) and batched augmentation (on the device).

Per image, in data-loader workers: decode and resize to a fixed uint8 square
(paper §2: shorter side to 256, centre 256x256), or RandomResizedCrop for the modern recipe.
Per batch, on the training device: random crops and flips (one gather), PCA colour noise,
normalisation. The same batched code serves the built-in dataset and image folders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from . import keyed_random as kr


def resize_square(size: int) -> v2.Compose:
    """Paper §2: rescale the shorter side to ``size``, keep the central ``size`` x ``size`` patch."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def random_resized_crop(crop: int, min_scale: float) -> v2.Compose:
    """Modern recipe (torchvision references): random area and aspect ratio, resized to ``crop``."""
    return v2.Compose([v2.RandomResizedCrop(crop, scale=(min_scale, 1.0), antialias=True), v2.PILToTensor()])


def pca_noise(x: torch.Tensor, alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> torch.Tensor:
    """Paper §4.1: add sum_i alpha_i * lambda_i * p_i to every pixel of an image.

    ``x`` is (B, 3, H, W) on the [0, 1] scale; ``alpha`` (B, 3) holds one draw per image and
    presentation (N(0, 0.1) in the paper); ``eigvec`` holds the p_i as columns."""
    shift = pca_shift(alpha.to(x.device), eigval.to(x.device), eigvec.to(x.device))
    return x + shift[:, :, None, None].to(x.dtype)


PCA_STREAMS = [10, 11, 12]  # keyed_random streams of the three alphas
UNIFORM_STREAMS = (0, 1, 2, 3, 4, 5, 6)  # the uniforms a training augmentation draws: crop_flip's 0-2, rrc_boxes' 3-6
AUGMENT_STREAMS = (*UNIFORM_STREAMS, *PCA_STREAMS, *(s + 1000 for s in PCA_STREAMS))  # and the alphas' normals' pairs


def epoch_draws(seed: int, epoch: int, order: torch.Tensor) -> kr.Draws:
    """Every draw a training augmentation takes for the samples ``order`` of ``epoch`` (a rank's epoch, taken with
    its order: data/batches.py): the uniforms and the PCA alphas' normals; a batch's are its ``rows``. On the CPU,
    whatever the training device."""
    return kr.Draws(kr.keys(seed, epoch, order), UNIFORM_STREAMS, PCA_STREAMS)


def pca_alpha(key: kr.Key, pca_std: float) -> torch.Tensor:
    """(B, 3): the paper's alpha_i ~ N(0, pca_std), one draw per image and presentation (keyed)."""
    return kr.normals(key, PCA_STREAMS) * pca_std


def pca_shift(alpha: torch.Tensor, eigval: torch.Tensor, eigvec: torch.Tensor) -> torch.Tensor:
    """(B, 3): the rgb offset per image, sum_i alpha_i * lambda_i * p_i."""
    return (alpha * eigval) @ eigvec.T


def crop_flip(x: torch.Tensor, crop: int, flip: bool, key: kr.Key) -> torch.Tensor:
    """Independent random ``crop`` x ``crop`` window (and horizontal flip) per image.

    ``x``: (B, C, S, S) of any dtype (uint8 is cheapest), ``key``: (B,) per-sample keys -> (B, C, crop, crop).
    On GPUs one gather; on CPUs a strided copy per image, which measured several times faster there."""
    b, c, h, w = x.shape
    dev = x.device
    key = key.to(dev)
    oy = kr.randint(key, 0, h - crop + 1)
    ox = kr.randint(key, 1, w - crop + 1)
    mirror = kr.uniform(key, 2) < 0.5 if flip else torch.zeros(b, dtype=torch.bool, device=dev)
    if dev.type == "cpu":
        out = torch.empty((b, c, crop, crop), dtype=x.dtype)
        for i, (y0, x0, m) in enumerate(zip(oy.tolist(), ox.tolist(), mirror.tolist())):
            window = x[i, :, y0 : y0 + crop, x0 : x0 + crop]
            out[i].copy_(window.flip(-1) if m else window)
        return out
    ar = torch.arange(crop, device=dev)
    iy = oy[:, None] + ar  # (B, crop)
    ix = torch.where(mirror[:, None], ox[:, None] + crop - 1 - ar, ox[:, None] + ar)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]]  # (B, crop, crop, C)
    return out.permute(0, 3, 1, 2).contiguous()


def resized_crop_batch(x: torch.Tensor, crop: int, min_scale: float, key: kr.Key) -> torch.Tensor:
    """RandomResizedCrop for a whole batch (scale ``[min_scale, 1]``, ratio 3/4..4/3), per-sample keys.

    For in-memory sources whose images are already square; folders do it per image in the workers.
    CPU: an integer box per image, resized with antialiased bilinear on the batch's own dtype, as
    torchvision's RandomResizedCrop does (on uint8, measured 16x faster here than roi_align on floats:
    31 vs 490 ms for 128 images of 256x256 -> 224). GPU: one roi_align over the batch, in float."""
    from torchvision.ops import roi_align

    b, c, h, w = x.shape
    x0, y0, cw, ch = rrc_boxes(key.to(x.device), h, w, min_scale)
    if x.device.type == "cpu":
        bw, bh = cw.round().clamp(1, w).long(), ch.round().clamp(1, h).long()
        left = torch.minimum(x0.round().long(), w - bw)
        top = torch.minimum(y0.round().long(), h - bh)
        out = torch.empty((b, c, crop, crop), dtype=x.dtype)
        for i, (x1, y1, ww, hh) in enumerate(zip(left.tolist(), top.tolist(), bw.tolist(), bh.tolist())):
            window = x[i : i + 1, :, y1 : y1 + hh, x1 : x1 + ww]
            out[i : i + 1] = F.interpolate(window, size=(crop, crop), mode="bilinear", antialias=True)
        return out
    boxes = torch.stack([torch.arange(b, device=x.device, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
    return roi_align(x.float(), boxes, output_size=crop, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def rrc_boxes(key: kr.Key, h: int, w: int, min_scale: float) -> tuple[torch.Tensor, ...]:
    """Per-sample RandomResizedCrop boxes ``(x0, y0, width, height)`` as floats: area ``[min_scale, 1]`` of
    the image, aspect ratio log-uniform in 3/4..4/3 (clamped to the image), position uniform."""
    area = (min_scale + (1 - min_scale) * kr.uniform(key, 3)) * h * w
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * kr.uniform(key, 4)
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(max=w)
    ch = torch.sqrt(area / ratio).clamp(max=h)
    return kr.uniform(key, 5) * (w - cw), kr.uniform(key, 6) * (h - ch), cw, ch


def random_flip(x: torch.Tensor, key: kr.Key) -> torch.Tensor:
    mirror = kr.uniform(key.to(x.device), 2) < 0.5
    return torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)


@dataclass
class Normalizer:
    """uint8 batch -> float batch: [0, 1] scale, optional PCA noise, then mean/std or mean image."""

    mean: torch.Tensor  # (3,)
    std: torch.Tensor  # (3,)
    mean_image: torch.Tensor | None = None  # (3, S, S) on the [0, 1] scale: paper-style pixel mean
    eigval: torch.Tensor | None = None
    eigvec: torch.Tensor | None = None

    def to(self, device: torch.device) -> Normalizer:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Normalizer(
            self.mean.to(device), self.std.to(device), mv(self.mean_image), mv(self.eigval), mv(self.eigvec)
        )

    def mean_image_at(self, size: Sequence[int]) -> torch.Tensor:
        mi = self.mean_image
        assert mi is not None
        if tuple(mi.shape[-2:]) != tuple(size):
            mi = torch.nn.functional.interpolate(mi[None], size=size, mode="bilinear")[0]
        return mi

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mul_(1.0 / 255.0)
        if self.mean_image is not None:
            x.sub_(self.mean_image_at(x.shape[-2:]))
        return x

    def finish(self, x: torch.Tensor, pca_std: float = 0.0, key: kr.Key | None = None) -> torch.Tensor:
        """In place on ``x`` (float, [0, 1] scale, mean image already subtracted in pixel mode)."""
        if pca_std > 0 and self.eigval is not None and self.eigvec is not None and key is not None:
            k = key.to(x.device)
            alpha = pca_alpha(k, pca_std)
            x = pca_noise(x, alpha, self.eigval, self.eigvec)
        if self.mean_image is not None:
            return x  # pixel-mean mode: the paper subtracts the mean only
        return x.sub_(self.mean[:, None, None]).div_(self.std[:, None, None])

    def fused(
        self,
        x: torch.Tensor,
        pca_std: float = 0.0,
        key: kr.Key | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """uint8 -> ``finish(scale(x))`` in two passes over the batch, ``x * a + b`` per image and channel
        (channel-mean mode only): ((x / 255 + pca shift) - mean) / std."""
        assert self.mean_image is None
        scale, bias, pca = self._affine(x.device, pca_std)
        if pca is not None and key is not None:  # the PCA shift in std units: N(0, 1) draws @ (3, 3), two ops
            bias = bias + kr.normals(key.to(x.device), PCA_STREAMS) @ pca
        out = x.to(torch.float32, memory_format=memory_format)
        return out.mul_(scale).add_(bias.view(-1, 3, 1, 1))

    def _affine(
        self, dev: torch.device, pca_std: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(1 / (255 std), -mean / std) as (1, 3, 1, 1) and (1, 3), and the PCA noise's (3, 3) map from N(0, 1)
        draws to offsets in std units (pca_std * lambda_i * p_i / std; None without it), once per device and
        pca_std: a run's constants, not a step's ops."""
        cached = self.__dict__.get("_affine_cache")
        if cached is None or cached[0] != (dev, pca_std):
            std, mean = self.std.to(dev), self.mean.to(dev)
            pca = None
            if pca_std > 0 and self.eigval is not None and self.eigvec is not None:
                pca = pca_std * self.eigval.to(dev)[:, None] * self.eigvec.to(dev).T / std[None, :]
            cached = ((dev, pca_std), (1.0 / (255.0 * std)).view(1, 3, 1, 1), (-mean / std).view(1, 3), pca)
            self.__dict__["_affine_cache"] = cached
        return cached[1], cached[2], cached[3]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic path (evaluation, prediction): uint8 (B, 3, H, W) -> normalised float."""
        return self.finish(self.scale(x))


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Progressive resizing of a cropped batch: the same view at ``size`` px (antialiased bilinear; uint8 stays
    uint8 on CPUs, other devices resize in float, which the fused normalisation takes as it is)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        x = x.float()
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


@dataclass
class BatchAugment:
    """Training augmentation on uint8 batches. ``mode``: paper (crop + flip), shift (crop only), modern
    (RandomResizedCrop + flip; done per image in the workers when ``pre_cropped``, else here on the batch).
    ``size`` (progressive resizing, data/resolution.py): the output side when below ``crop``, of the same view."""

    mode: str
    crop: int
    normalizer: Normalizer
    pca_std: float = 0.0
    min_scale: float = 0.08
    pre_cropped: bool = False  # a folder's workers did the RandomResizedCrop, at this epoch's size

    memory_format: torch.memory_format = torch.contiguous_format  # of the output (train: channels_last)

    def __call__(self, x: torch.Tensor, key: kr.Key, size: int | None = None) -> torch.Tensor:
        """``x``: uint8 (B, 3, S, S); ``key``: (B,) from ``keyed_random.keys(seed, epoch, index)``, or their
        ``Draws`` (``epoch_draws``: the training loop's, drawn ahead)."""
        norm, size = self.normalizer, size or self.crop
        # keys: every stream below hashed in one grid (a Draws: drawn already)
        draws = key.to(x.device) if isinstance(key, kr.Draws) else kr.Draws(key.to(x.device), AUGMENT_STREAMS)
        if self.mode not in ("paper", "shift", "modern"):
            raise ValueError(f"unknown augmentation {self.mode!r}")
        if norm.mean_image is None and x.dtype == torch.uint8:
            # channel-mean mode: every geometric step on the uint8 pixels (4x less data), then one fused
            # conversion; measured 148 -> 60 ms (modern) for 128 images of 256x256 on this 2-core CPU
            if self.mode == "modern":
                x = resize_batch(x, size) if self.pre_cropped else resized_crop_batch(x, size, self.min_scale, draws)
                x = random_flip(x, draws)
            else:
                x = resize_batch(crop_flip(x, self.crop, self.mode == "paper", draws), size)
            return norm.fused(x, self.pca_std, draws, self.memory_format)
        if self.mode in ("paper", "shift"):  # crop the uint8 pixels first: 4x less data to convert
            flip = self.mode == "paper"
            mean_image = None
            if norm.mean_image is not None:  # the mean image is cropped and flipped with its image
                mi = norm.mean_image_at(x.shape[-2:]).to(x.device)
                mean_image = crop_flip(mi.expand(x.shape[0], -1, -1, -1), self.crop, flip, draws)
            x = crop_flip(x, self.crop, flip, draws).float().mul_(1.0 / 255.0)
            if mean_image is not None:
                x.sub_(mean_image)
            return norm.finish(resize_batch(x, size).contiguous(), self.pca_std, draws)
        x = norm.scale(x)  # pixel-mean mode: the full-size mean image is subtracted before cropping
        x = resize_batch(x, size) if self.pre_cropped else resized_crop_batch(x, size, self.min_scale, draws)
        x = random_flip(x, draws)
        return self.normalizer.finish(x.contiguous(), self.pca_std, draws)


# --- test-time views (paper §4.1: "averaging the predictions made by the network's softmax layer on the
# ten patches": four corners + centre, and their horizontal reflections). (B, C, S, S) -> list of (B, C, c, c).


def tta_center(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    return [v2.functional.center_crop(x, [crop, crop])]


def tta_flip(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    c = v2.functional.center_crop(x, [crop, crop])
    return [c, c.flip(-1)]


def tta_10crop(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    return list(v2.functional.ten_crop(x, [crop, crop]))


TTA = {"center": tta_center, "flip": tta_flip, "10crop": tta_10crop}
