"""Reading this package's safetensors weights file: the tensors and the metadata beside them, without building a
network (so that the model builder can read one too). The format's one home: ``SAFETENSORS_FORMAT`` and the
metadata keys; ``weights.save_safetensors`` writes it, ``weights.load_safetensors`` makes a model of it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.preprocess import Preprocess
from ..errors import UserError

SAFETENSORS_FORMAT = "alexnet-safetensors/1"
MEAN_IMAGE_KEY = "__preprocess__.mean_image"  # the mean image travels as a tensor beside the weights


@dataclass
class WeightsFile:
    state: dict[str, torch.Tensor]  # the network's tensors only
    variant: str
    class_names: list[str]
    preprocess: Preprocess
    options: dict[str, Any]  # architecture options (LRN settings)
    published: dict[str, Any] | None


def read_safetensors(path: Path) -> WeightsFile:
    """``path``'s tensors and metadata; one ``UserError`` for a missing, unreadable or foreign file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise UserError(f"{path}: safetensors file without alexnet metadata (format {meta.get('format')!r})")
    try:
        pre = Preprocess.from_meta(json.loads(meta["preprocess"]), tensors.pop(MEAN_IMAGE_KEY, None))
        names, variant = json.loads(meta["class_names"]), meta["variant"]
        options = json.loads(meta.get("model_options", "{}"))
        published = json.loads(meta["published"]) if "published" in meta else None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: incomplete alexnet metadata (missing or bad {e})") from None
    return WeightsFile(tensors, variant, names, pre, options, published)
