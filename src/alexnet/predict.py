"""`alexnet predict` and `alexnet features`: class probabilities and fc7 vectors for image files."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.classes import display_name
from .data.transforms import tta_center
from .errors import UserError
from .evaluate import predict_probs
from .inference import collect_files, run
from .weights import Loaded


def class_label(loaded: Loaded, index: int) -> str:
    return display_name(loaded.class_names[index])  # "tench (n01440764)" for WordNet ids, else the name


def predict(loaded: Loaded, paths: list[str], topk: int, tta: str, batch_size: int, device: torch.device,
            as_json: bool) -> int:  # fmt: skip
    items = collect_files(paths)
    crop = int(loaded.preprocess["crop"])
    k = min(topk, len(loaded.class_names))
    failed = 0
    if not as_json:
        print(f"{'file':40s} {'rank':>4s}  {'class':40s} {'prob':>7s}")
    for item, probs in run(
        loaded, items, batch_size, device, lambda x: predict_probs(loaded.model, x, crop, tta, device)
    ):
        if probs is None:
            failed += 1
            if as_json:
                print(json.dumps({"file": item.file, "error": item.error}), flush=True)
            else:
                print(f"error: {item.error}", file=sys.stderr)
            continue
        p, idx = probs.topk(k)
        top = [{"index": int(i), "class": class_label(loaded, int(i)), "prob": float(q)} for q, i in zip(p, idx)]
        if as_json:
            print(json.dumps({"file": item.file, "top": top}), flush=True)
        else:
            for rank, t in enumerate(top, 1):
                name = item.file if rank == 1 else ""
                print(f"{name[-40:]:40s} {rank:4d}  {t['class'][:40]:40s} {t['prob']:7.2%}")
    if failed:
        print(f"{failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def feature_fn(loaded: Loaded, layer: str = "fc7") -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised full-size batch -> the centre crop's ``layer`` activations, flattened. Shared by the
    `features` command and the neighbours figure."""
    fn = _layer_fn(loaded.model, layer)
    crop = int(loaded.preprocess["crop"])
    return lambda x: fn(tta_center(x, crop)[0])


def _layer_fn(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """fc7 (default): the 4096-d activations the paper's Fig. 4 compares; pool5: the 9216-d conv features;
    fc6; or any module name from `alexnet summary` (e.g. conv5), flattened."""
    if layer == "fc7":
        return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)
    if layer == "pool5":
        return lambda x: torch.flatten(model.forward_features(x), 1)
    if layer == "logits":
        return lambda x: model(x)
    modules = dict(model.named_modules())
    aliases = {"fc6": ["classifier.relu6", "classifier.2"]}
    names = aliases.get(layer, [layer, f"features.{layer}", f"classifier.{layer}"])
    target = next((modules[n] for n in names if n in modules), None)
    if target is None:
        shown = [n for n in modules if n and "." in n]
        raise UserError(f"unknown layer {layer!r}; use fc7, fc6, pool5, logits or one of: {', '.join(shown)}")

    def fn(x: torch.Tensor) -> torch.Tensor:
        grabbed: list[torch.Tensor] = []
        handle = target.register_forward_hook(lambda _m, _i, out: grabbed.append(out.detach().clone()))
        try:
            model(x)
        finally:
            handle.remove()
        return torch.flatten(grabbed[0], 1)

    return fn


def features(loaded: Loaded, paths: list[str], out: Path, layer: str, batch_size: int, device: torch.device) -> int:
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz (numpy's format), got {out}")
    if not out.parent.exists():
        raise UserError(f"output directory does not exist: {out.parent}")
    fn = feature_fn(loaded, layer)
    items = collect_files(paths)
    vectors, files, failed = [], [], 0
    for item, vec in run(loaded, items, batch_size, device, fn):
        if vec is None:
            failed += 1
            print(f"error: {item.error}", file=sys.stderr)
            continue
        vectors.append(vec.numpy())
        files.append(item.file)
    if not vectors:
        raise UserError("no image could be read; nothing written")
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, features=np.stack(vectors).astype(np.float32), files=np.array(files), layer=np.array(layer),
             class_names=np.array(loaded.class_names))  # fmt: skip
    tmp.replace(out)
    print(f"wrote {len(files)} x {vectors[0].shape[0]} {layer} features to {out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0
