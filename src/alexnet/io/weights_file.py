"""Reading this package's weights, without building a network (so that the model builder can read them too): a
safetensors file, a run directory or checkpoint, a Hub repository. The safetensors format's one home:
``SAFETENSORS_FORMAT`` and the metadata keys; ``weights.save_safetensors`` writes it, ``weights.load_weights``
makes a model of any of them."""

from __future__ import annotations

import json
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
    return WeightsFile(tensors, variant, names, pre, options, published, str(path))
