"""`alexnet import-weights`: Caffe's bvlc_alexnet (.caffemodel) or its ONNX conversion (.onnx) as a .safetensors
file of this package's ``alexnet``, or torchvision's AlexNet trained elsewhere (a pytorch/examples checkpoint, a
state_dict) as ``alexnet_owt``, usable wherever weights are (predict, evaluate, features, figures, export,
and ``--weights`` to fine-tune). The conversion and its checks live in ``foreign.py``."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import UserError
from ..io.atomic import check_output
from ..io.checkpoint import foreign_kind, protobuf_kind
from ..io.foreign import (
    published_for,
    read_caffemodel,
    read_mean_binaryproto,
    read_onnx,
    read_torchvision_state,
    to_loaded,
)
from ..io.weights import save_safetensors


def run_import(source: str, out: str, mean: str | None = None, force: bool = False) -> int:
    src, dst = Path(source), Path(out)
    if not src.is_file():
        raise UserError(f"{src} is a directory; give the .caffemodel or .onnx file in it" if src.is_dir()
                        else f"no such file: {src}")  # fmt: skip
    if dst.suffix != ".safetensors":
        raise UserError(f"--out must name a .safetensors file, got {dst}")
    check_output(dst, force)
    if foreign_kind(src) == "safetensors":
        raise UserError(f"{src} is a safetensors weights file, this package's own format: every command takes it as "
                        f"it is (`alexnet predict {src} IMAGE`, `--weights {src}`)")  # fmt: skip
    readers = {".caffemodel": read_caffemodel, ".onnx": read_onnx, "caffe": read_caffemodel, "onnx": read_onnx}
    kind = src.suffix if src.suffix in readers else protobuf_kind(src)  # a model-zoo file renamed on the way
    if kind is None and zipfile.is_zipfile(src):  # torch.save's format: torchvision's layout
        if mean:
            raise UserError("--mean is Caffe's mean image; a PyTorch file comes with torchvision's preprocessing")
        loaded = read_torchvision_state(src)
        save_safetensors(loaded, dst)
        print(f"wrote {dst}: alexnet_owt (torchvision's AlexNet), {len(loaded.class_names)} classes"
              f"{' (ImageNet, in sorted wnid order)' if len(loaded.class_names) == 1000 else ''}; resize 256, centre "
              "crop 224, ImageNet mean/std")  # fmt: skip
        return 0
    if kind is None:
        raise UserError(f"{src}: unknown format; expected a .caffemodel (Caffe), .onnx, or PyTorch (.pth) file")
    mean_image = read_mean_binaryproto(Path(mean)) if mean else None
    loaded = to_loaded(readers[kind](src), mean_image, published_for(src))
    save_safetensors(loaded, dst)
    lrn, pre = loaded.options, loaded.preprocess
    how = "mean image " + mean if mean else "per-channel mean (B, G, R) = (104, 117, 123)"
    known = (f"; the published file ({loaded.published['what']}: top-1 {100 * loaded.published['top1']:.1f} %)"
             if loaded.published else "; not the published file (its checksum differs): no published accuracy")  # fmt: skip
    print(f"wrote {dst}: alexnet, {len(loaded.class_names)} classes, LRN size {lrn['lrn_size']} alpha {lrn['lrn_alpha']:g} "
          f"beta {lrn['lrn_beta']:g} k {lrn['lrn_k']:g} over all maps; BGR and the 0-255 scale folded into conv1; "
          f"{how}; resize {pre.resize}, centre crop {pre.crop}{known}")  # fmt: skip
    return 0
