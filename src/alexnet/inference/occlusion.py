"""A look inside a trained network, after Zeiler & Fergus 2014 (who dissected exactly this architecture):
occlusion sensitivity (§4.2: slide a grey square over the image, record the class probability) and the
validation patches that excite chosen conv5 units most (their Fig. 2's top-9 activations, shown as the
input patch each unit sees rather than a deconvnet projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserValueError
from ..io.atomic import atomic_savefig
from . import autocast

GRID = 28  # ~28 x 28 patch positions per image: 784 forward passes, batched (seconds on a CPU for 227 px)


@dataclass
class OcclusionMap:
    heat: torch.Tensor  # (S, S): the target's mean probability over the placements of the patch covering each pixel
    grid: torch.Tensor  # (n, n): the target's probability with the patch's top-left corner at positions[i], [j]
    positions: list[int]
    patch: int
    target: int
    base_prob: float  # without occlusion


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Top-left corners from 0 to size - patch (the last one reaches the edge)."""
    last = size - patch
    out = list(range(0, last + 1, stride))
    return out if out[-1] == last else [*out, last]


@torch.no_grad()
def occlusion_map(model: nn.Module, x: torch.Tensor, target: int | None = None, patch: int | None = None,
                  stride: int | None = None, batch: int = 64, amp: str = "none") -> OcclusionMap:  # fmt: skip
    """``x``: one normalised (3, S, S) image on the model's device. The patch is 0 after normalisation: the mean
    colour (grey), as Zeiler & Fergus. Default patch S/5 (45 px at 227), stride so that ~28 x 28 positions."""
    s = x.shape[-1]
    patch = patch or max(1, s // 5)
    stride = stride or max(1, (s - patch) // (GRID - 1))
    if not 0 < patch <= s:
        raise UserValueError(f"the occluding square must be 1 to {s} px (the crop), got {patch}")
    with autocast(x.device, amp):
        base = model(x[None]).float().softmax(-1)[0]
    target = int(base.argmax()) if target is None else target
    pos = positions(s, patch, stride)
    corners = [(i, j) for i in pos for j in pos]
    probs = []
    for start in range(0, len(corners), batch):
        chunk = corners[start : start + batch]
        b = x.expand(len(chunk), -1, -1, -1).clone()
        for k, (i, j) in enumerate(chunk):
            b[k, :, i : i + patch, j : j + patch] = 0.0
        with autocast(x.device, amp):
            probs.append(model(b).float().softmax(-1)[:, target].cpu())
    grid = torch.cat(probs).view(len(pos), len(pos))
    total, count = torch.zeros(s, s), torch.zeros(s, s)
    for (i, j), p in zip(corners, grid.flatten().tolist()):
        total[i : i + patch, j : j + patch] += p
        count[i : i + patch, j : j + patch] += 1
    heat = torch.where(count > 0, total / count.clamp(min=1), float(base[target]))
    return OcclusionMap(heat, grid, pos, patch, target, float(base[target]))


def receptive_field(model: nn.Module, layer: str = "conv5") -> tuple[int, int, float]:
    """(size, jump, centre of output 0) in input pixels, from the Conv2d/MaxPool2d layers of ``model.features``
    up to ``layer``: 163 px, 16 px and 17 px for conv5 of the 2012 network."""
    rf, jump, start = 1, 1, 0.0
    layer = resolve_layer(model, layer)
    for name, m in model.get_submodule("features").named_children():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            k, s, p = (_pair(getattr(m, a)) for a in ("kernel_size", "stride", "padding"))
            start += ((k - 1) / 2 - p) * jump
            rf += (k - 1) * jump
            jump *= s
        if name == layer:
            return rf, jump, start
    raise UserValueError(f"no layer {layer!r} in model.features")


def _pair(v: int | tuple[int, ...]) -> int:
    return v if isinstance(v, int) else v[0]


@dataclass
class TopPatches:
    units: list[int]
    patches: list[list[torch.Tensor]]  # per unit, up to k uint8 (3, h, w) input patches, strongest first
    values: list[list[float]]


@torch.no_grad()
def top_patches(model: nn.Module, images: torch.Tensor, normalise: object, crop: int, units: list[int],
                k: int = 9, layer: str = "conv5", batch: int = 32) -> TopPatches:  # fmt: skip
    """The ``k`` images (uint8, at the resize size) whose centre crop excites each conv5 unit most (max over
    positions), and the patch of the crop that unit's strongest position sees (its receptive field)."""
    target = dict(model.named_modules())[f"features.{_relu_after(model, layer)}"]
    grabbed: list[torch.Tensor] = []
    hook = target.register_forward_hook(lambda _m, _i, out: grabbed.append(out.detach()[:, units].float().cpu()))
    dev = next(model.parameters()).device
    off = (images.shape[-1] - crop) // 2
    crops = images[..., off : off + crop, off : off + crop]
    try:
        for s in range(0, len(crops), batch):
            model(normalise(crops[s : s + batch].to(dev)))  # type: ignore[operator]
    finally:
        hook.remove()
    acts = torch.cat(grabbed)  # (N, U, h, w)
    flat = acts.flatten(2)
    best, where = flat.max(2)  # (N, U)
    rf, jump, start = receptive_field(model, layer)
    out_p, out_v = [], []
    for u in range(len(units)):
        order = best[:, u].argsort(descending=True)[:k].tolist()
        patches, vals = [], []
        for n in order:
            i, j = divmod(int(where[n, u]), acts.shape[-1])
            cy, cx = start + i * jump, start + j * jump
            y0, x0 = int(max(0, cy - rf / 2)), int(max(0, cx - rf / 2))
            patches.append(crops[n, :, y0 : int(min(crop, cy + rf / 2)), x0 : int(min(crop, cx + rf / 2))])
            vals.append(float(best[n, u]))
        out_p.append(patches)
        out_v.append(vals)
    return TopPatches(units, out_p, out_v)


def resolve_layer(model: nn.Module, layer: str) -> str:
    """A name in ``model.features``; ``conv5`` is also the last convolution of numbered Sequentials (alexnet_owt)."""
    features = model.get_submodule("features")
    names = [n for n, _ in features.named_children()]
    if layer in names:
        return layer
    convs = [n for n, m in features.named_children() if isinstance(m, nn.Conv2d)]
    if layer == "conv5" and len(convs) == 5:
        return convs[-1]
    raise UserValueError(f"no layer {layer!r} in model.features (have {', '.join(names)})")


def _relu_after(model: nn.Module, layer: str) -> str:
    """The module whose output is ``layer``'s rectified maps (the ReLU after it, or the layer itself)."""
    layer = resolve_layer(model, layer)
    features = model.get_submodule("features")
    names = [n for n, _ in features.named_children()]
    after = names[names.index(layer) + 1 :]
    relu = next((n for n in after if isinstance(features.get_submodule(n), nn.ReLU)), None)
    return relu or layer


def overlay(image: torch.Tensor, m: OcclusionMap, title: str, out: Path, dpi: int = 100) -> Path:
    """The image beside the probability map over it (low = the parts the class depends on)."""
    import matplotlib.pyplot as plt

    img = image.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(img)
    axes[1].imshow(img)
    shown = axes[1].imshow(m.heat.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=max(m.base_prob, 1e-6))
    for ax in axes:
        ax.axis("off")
    axes[0].set_title(title, fontsize=9)
    axes[1].set_title(f"p(class) with a {m.patch}px grey square here", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    atomic_savefig(fig, out, bbox_inches="tight", facecolor="white", dpi=dpi)
    plt.close(fig)
    return out
