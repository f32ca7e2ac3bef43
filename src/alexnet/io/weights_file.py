"""Reading this package's weights, without building a network (so that the model builder can read them too): a
safetensors file, a run directory or checkpoint, a Hub repository. The safetensors format's one home:
``SAFETENSORS_FORMAT`` and the metadata keys; ``weights.save_safetensors`` writes it, ``weights.load_weights``
makes a model of any of them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.preprocess import Preprocess
from ..errors import UserError
from . import checkpoint as ckpt_io
from . import hub

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
    source: str = ""
    config: dict[str, Any] | None = None  # the training run's config (checkpoints only)


def model_options(name: str, model_cfg: dict[str, Any] | None, dropout: bool = True) -> dict[str, Any]:
    """The architecture options stored in a run's ``model`` config section (or a weights file's metadata):
    dropout, and the LRN settings for ``alexnet``. The one place that maps config keys to builder options."""
    m = model_cfg or {}
    opts: dict[str, Any] = {"dropout": m["dropout"]} if dropout and "dropout" in m else {}
    if name == "alexnet":
        opts |= {k: m[k] for k in ("lrn_size", "lrn_alpha", "lrn_beta", "lrn_k", "lrn_groups") if k in m}
    return opts


# a weights file's architecture options (model_options), what each must be
_OPTION_TYPES: dict[str, type] = {"dropout": float, "lrn_size": int, "lrn_alpha": float, "lrn_beta": float,
                                  "lrn_k": float, "lrn_groups": int}  # fmt: skip


def _checked_options(options: Any) -> dict[str, Any]:
    """model_options as read from a file: known keys, numbers of the right kind (ValueError otherwise)."""
    if not isinstance(options, dict):
        raise ValueError(f"model_options {str(options)[:60]}")
    for key, value in options.items():
        tp = _OPTION_TYPES.get(key)
        ok = tp is not None and isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or (tp is int and value < 1) or (key == "dropout" and not 0 <= value < 1):
            raise ValueError(f"model_options {key}={value!r}")
    return options


def read_weights(spec: str) -> WeightsFile:
    """The weights ``spec`` names: ``hf-hub:ORG/NAME[@REV]`` (through the Hub's cache), a ``.safetensors`` file,
    a run directory (its exported model.safetensors if present and newer than its checkpoints, else
    checkpoints/best.pt) or a checkpoint; a checkpoint's are its EMA weights when the run kept them."""
    if hub.is_hub(spec):  # a repository of `alexnet export --format hub` output
        f = read_safetensors(hub.download(spec))
        f.source = spec
        return f
    path = Path(spec)
    if path.is_dir() and (path / "model.safetensors").is_file():
        st = path / "model.safetensors"
        newest_ckpt = max((p.stat().st_mtime for p in (path / "checkpoints").glob("*.pt")), default=0.0)
        if st.stat().st_mtime >= newest_ckpt:
            path = st
    if path.suffix == ".safetensors" or (path.is_file() and ckpt_io.foreign_kind(path) == "safetensors"):
        return read_safetensors(path)
    path = ckpt_io.resolve(path)
    ck = ckpt_io.load(path)
    try:
        variant, names, cfg = ck["variant"], list(ck["class_names"]), dict(ck["config"])
        pre = Preprocess.from_meta(ck["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: checkpoint without its metadata ({e})") from None
    # a run with train.ema was validated on the averaged weights: those are the run's result
    state = ck.get("ema") or ck["model"]
    options = model_options(variant, cfg.get("model"), dropout=False)
    return WeightsFile(state, variant, names, pre, options, None, str(path), cfg)


def read_safetensors(path: Path) -> WeightsFile:
    """``path``'s tensors and metadata; one ``UserError`` for a missing, unreadable or foreign file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:  # also what safetensors raises for a file it may not read
        if path.is_file():
            raise UserError(
                f"{path}: {'Permission denied' if not os.access(path, os.R_OK) else 'cannot be read'}"
            ) from None
        raise UserError(f"no such file: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise UserError(f"{path}: safetensors file without alexnet metadata (format {meta.get('format')!r})")
    try:
        pre = Preprocess.from_meta(json.loads(meta["preprocess"]), tensors.pop(MEAN_IMAGE_KEY, None))
        names, variant = json.loads(meta["class_names"]), meta["variant"]
        options = _checked_options(json.loads(meta.get("model_options", "{}")))
        published = json.loads(meta["published"]) if "published" in meta else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names {str(names)[:60]}: need a list of names")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: incomplete alexnet metadata (missing or bad {e})") from None
    return WeightsFile(tensors, variant, names, pre, options, published, str(path))
