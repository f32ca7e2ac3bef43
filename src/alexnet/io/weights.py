"""Trained weights from any source, as a ready model plus what it needs to run: a run directory, a
checkpoint (.pt), an exported .safetensors file, a Hub repository (``hf-hub:ORG/NAME``), or ``torchvision``;
and the one safetensors writer.
Loading never executes code: checkpoints through ``weights_only=True``, safetensors by design."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config, from_dict
from ..data.classes import imagenet_classes
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..models import Network, create_model, get_model_info
from .atomic import atomic_write_bytes
from .weights_file import MEAN_IMAGE_KEY, SAFETENSORS_FORMAT, read_weights


@dataclass
class Loaded:
    model: Network
    variant: str
    class_names: list[str]
    preprocess: Preprocess
    config: Config | None  # the training run's config (checkpoints only): its data, recipe, options
    source: str
    options: dict[str, Any] = field(default_factory=dict)  # architecture options (LRN settings) to rebuild it
    published: dict[str, Any] | None = None  # the source's own published accuracy (imported weights)


def model_from_state(
    variant: str, num_classes: int, state: dict[str, torch.Tensor], options: dict[str, Any]
) -> Network:
    """The network ``state`` holds, built on the meta device with the tensors assigned: no initialisation that
    the weights overwrite (0.6 s of every `predict`, `evaluate` and `export` of alexnet_owt on the 2-core AVX2
    machine, against 4 ms). ``state``'s tensors become the network's (every caller passes weights it has just
    read); only those of another dtype, or not contiguous (a run's channels_last conv weights), are copied."""
    get_model_info(variant)
    with torch.device("meta"):
        model = create_model(variant, num_classes, init="default", **options)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: v.to(dtypes[k] if v.is_floating_point() and k in dtypes else v.dtype,
                     memory_format=torch.contiguous_format) for k, v in state.items()}  # fmt: skip
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = (str(e).splitlines()[1:] or [str(e)])[0].strip()  # the first tensor named, not "Error(s) in ..."
        raise UserError(f"weights do not fit {variant} with {num_classes} classes: {first}") from None
    return model


def load_weights(spec: str, device: torch.device | str = "cpu", towers: str | None = None) -> Loaded:
    """``towers="DEV_A,DEV_B"`` splits a two-tower model across two devices (the paper's layout)."""
    loaded = _load(spec)
    if towers:
        from ..models.towers import TowerAlexNet, check_towers
        from ..parallel.distributed import pick_device

        a, b = (pick_device(d) for d in check_towers(loaded.variant, towers))
        loaded.model = TowerAlexNet.from_grouped(loaded.model, (a, b)).eval()
    else:
        loaded.model = loaded.model.to(device).eval()
    return loaded


def _load(spec: str) -> Loaded:
    if spec == "torchvision":
        model = create_model("alexnet_owt", 1000, weights="torchvision")
        names = [w for w, _ in imagenet_classes()]
        return Loaded(model, "alexnet_owt", names, Preprocess.imagenet(), None, "torchvision IMAGENET1K_V1")
    f = read_weights(spec)
    model = model_from_state(f.variant, len(f.class_names), f.state, f.options)
    cfg = None if f.config is None else from_dict(f.config, f"checkpoint {f.source}")
    return Loaded(model, f.variant, f.class_names, f.preprocess, cfg, f.source, f.options, f.published)


def save_safetensors(loaded: Loaded, out: Path) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    pre = loaded.preprocess
    if pre.mean_image is not None:
        tensors[MEAN_IMAGE_KEY] = pre.mean_image.float().contiguous()
    meta = {
        "format": SAFETENSORS_FORMAT,
        "variant": loaded.variant,
        "class_names": json.dumps(loaded.class_names),
        "input_size": str(pre.crop),
        "preprocess": json.dumps(pre.to_meta()),
        "model_options": json.dumps(loaded.options),
        "source": loaded.source,
    }
    if loaded.published:
        meta["published"] = json.dumps(loaded.published)
    atomic_write_bytes(out, save(tensors, metadata=meta))
