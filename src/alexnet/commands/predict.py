"""`alexnet predict` and `alexnet features`: class probabilities and fc7 vectors for image files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..data.classes import display_name
from ..errors import UserError
from ..inference import compute_path, feature_fn, predict_probs
from ..inference.imagefiles import collect_files, run
from ..io.atomic import atomic_write, check_output
from ..io.onnx_runtime import inference_path, load_for_inference, takes_uint8
from ..io.weights import Loaded, load_weights
from ..parallel.distributed import pick_device


def class_label(loaded: Loaded, index: int) -> str:
    return display_name(loaded.class_names[index])  # "tench (n01440764)" for WordNet ids, else the name


def predict(weights: str, paths: list[str], topk: int = 5, tta: str = "center", batch_size: int = 32,
            device: str = "auto", towers: str | None = None, as_json: bool = False, amp: str = "auto") -> int:  # fmt: skip
    """`alexnet predict`: a table (or JSON lines) of the top-k classes per image; exit code 1 if any failed.
    ``weights`` may also be an ONNX file this package exported (run in onnxruntime)."""
    if topk < 1:
        raise UserError("--topk must be at least 1")
    dev = pick_device(device)
    loaded = load_for_inference(weights, dev, towers)
    path = inference_path(loaded.model, dev, amp, tta)
    items = collect_files(paths)
    crop = loaded.preprocess.crop
    k = min(topk, len(loaded.class_names))
    failed = 0
    if not as_json:
        print(f"{'file':40s} {'rank':>4s}  {'class':40s} {'prob':>7s}")
    for item, probs in run(loaded.preprocess, items, batch_size, dev,
                           lambda x: predict_probs(loaded.model, x, crop, tta, dev, path.amp, path.channels_last),
                           normalize=not takes_uint8(loaded.model)):  # fmt: skip
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
                print(f"{_fit(name, tail=True)} {rank:4d}  {_fit(str(t['class']))} {t['prob']:7.2%}")
    if failed:
        print(f"{failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def _fit(text: str, width: int = 40, tail: bool = False) -> str:
    """A table cell: ``text`` padded to ``width``, or cut with "..." where it was cut (a path keeps its end)."""
    if len(text) <= width:
        return f"{text:{width}s}"
    return "..." + text[3 - width :] if tail else text[: width - 3] + "..."


def features(weights: str, paths: list[str], out: Path, layer: str = "fc7", batch_size: int = 32,
             device: str = "auto", amp: str = "auto", force: bool = False) -> int:  # fmt: skip
    """`alexnet features`: ``layer`` activations of each image into an .npz; exit code 1 if any failed."""
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz (numpy's format), got {out}")
    check_output(out, force)
    dev = pick_device(device)
    loaded = load_weights(weights, dev)
    fn = feature_fn(loaded.model, loaded.preprocess.crop, layer, compute_path(loaded.model, dev, amp))
    items = collect_files(paths)
    vectors, files, failed = [], [], 0
    for item, vec in run(loaded.preprocess, items, batch_size, dev, fn):
        if vec is None:
            failed += 1
            print(f"error: {item.error}", file=sys.stderr)
            continue
        vectors.append(vec.numpy())
        files.append(item.file)
    if not vectors:
        raise UserError("no image could be read; nothing written")
    features = np.stack(vectors).astype(np.float32)
    atomic_write(out, lambda f: np.savez(f, features=features, files=np.array(files), layer=np.array(layer),
                                         class_names=np.array(loaded.class_names)))  # fmt: skip
    print(f"wrote {len(files)} x {vectors[0].shape[0]} {layer} features to {out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0
