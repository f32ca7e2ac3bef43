"""Trained weights from any source, as a ready model plus what it needs to run:
a run directory, a checkpoint (.pt), an exported .safetensors file, or ``torchvision``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .data.classes import imagenet_classes
from .errors import UserError
from .models import IMAGENET_MEAN, IMAGENET_STD, create_model, get_model_info


@dataclass
class Loaded:
    model: nn.Module
    variant: str
    class_names: list[str]
    preprocess: dict[str, Any]  # resize, crop, mean, std, mean_image
    config: dict[str, Any] | None
    source: str


def _model_from_state(variant: str, num_classes: int, state: dict[str, torch.Tensor], config: dict | None) -> nn.Module:
    opts: dict[str, Any] = {}
    if config and variant == "alexnet":
        m = config["model"]
        opts = {k: m[k] for k in ("lrn_size", "lrn_alpha", "lrn_beta", "lrn_k")}
    model = create_model(variant, num_classes, init="default", **opts)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"weights do not fit {variant} with {num_classes} classes ({str(e).splitlines()[0]})") from None
    return model


def load_weights(spec: str, device: torch.device | str = "cpu", towers: str | None = None) -> Loaded:
    """``towers="DEV_A,DEV_B"`` splits a two-tower model across two devices (the paper's layout)."""
    loaded = _load(spec, device)
    if towers:
        from .distributed import pick_device
        from .models.towers import TowerAlexNet

        if loaded.variant not in ("alexnet", "alexnet_bn"):
            raise UserError(f"--towers needs a two-tower model (alexnet or alexnet_bn), not {loaded.variant}")
        devices = tuple(pick_device(d.strip()) for d in towers.split(","))
        if len(devices) != 2:
            raise UserError(f"--towers must name two devices like cuda:0,cuda:1, got {towers!r}")
        loaded.model = TowerAlexNet.from_grouped(loaded.model.cpu(), devices).eval()
    return loaded


def _load(spec: str, device: torch.device | str) -> Loaded:
    if spec == "torchvision":
        model = create_model("alexnet_owt", 1000, weights="torchvision")
        pre = {"resize": 256, "crop": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "mean_image": None}
        names = [w for w, _ in imagenet_classes()]
        return Loaded(model.to(device).eval(), "alexnet_owt", names, pre, None, "torchvision IMAGENET1K_V1")
    path = Path(spec)
    if path.is_dir() and (path / "model.safetensors").is_file():
        # a run directory with an export: prefer it unless a checkpoint is newer
        st = path / "model.safetensors"
        newest_ckpt = max((p.stat().st_mtime for p in (path / "checkpoints").glob("*.pt")), default=0.0)
        if st.stat().st_mtime >= newest_ckpt:
            path = st
    if path.suffix == ".safetensors":
        from .export import load_safetensors

        loaded = load_safetensors(path)
        loaded.model.to(device).eval()
        return loaded
    path = ckpt_io.resolve(path)
    ck = ckpt_io.load(path)
    variant = ck["variant"]
    get_model_info(variant)
    model = _model_from_state(variant, len(ck["class_names"]), ck["model"], ck.get("config"))
    return Loaded(
        model.to(device).eval(), variant, list(ck["class_names"]), dict(ck["preprocess"]), ck["config"], str(path)
    )
