"""The paper's network trained elsewhere, as this package's ``alexnet``: Caffe's ``bvlc_alexnet.caffemodel`` and
its ONNX model-zoo conversion (``bvlcalexnet-*.onnx``).

Both are read by structure, not by names: the convolutions, LRNs, poolings and fully-connected layers in graph
order must be AlexNet's (conv lrn pool conv lrn pool conv conv conv pool fc fc fc; CaffeNet's pool-before-norm
order is refused), and every weight must have AlexNet's shape and grouping. Caffe's conventions become ours:
- BGR input: conv1's input channels are reversed, so the imported model takes RGB like every other here;
- pixels on the 0-255 scale: conv1's weights are multiplied by 255, so it takes [0, 1] pixels;
- mean subtraction, no std: by default the per-channel mean (B, G, R) = (104, 117, 123) of Caffe's examples, or
  the mean image of ``ilsvrc_2012_mean.binaryproto``, recorded in the preprocessing metadata on the [0, 1] scale,
  with resize 256 and centre crop 227 (Caffe's test-time crop);
- LRN with Caffe's k (1) and alpha/n convention (PyTorch's), across all maps (``lrn_groups=1``), not per tower;
- Caffe's pooling rounds up, PyTorch's down: at 227x227 every pooling output has the same size either way;
- no final softmax (Caffe's ``prob`` layer, ONNX's Softmax): the model returns logits.

And torchvision's AlexNet (this package's ``alexnet_owt``) trained elsewhere: a checkpoint of pytorch/examples'
``imagenet/main.py --arch alexnet`` or a bare state_dict (``read_torchvision_state``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.classes import imagenet_classes
from ..data.preprocess import Preprocess
from ..errors import UserError, missing_extra
from ..models import create_model
from ..models.lrn import LRNSpec
from .checkpoint import FORMAT, plain_state_dict
from .export_meta import ONNX_KEY
from .weights import Loaded, model_from_state

ORDER = "conv lrn pool conv lrn pool conv conv conv pool fc fc fc".split()
# out, in / groups, kernel, groups, stride, padding
CONVS = [
    (96, 3, 11, 1, 4, 0),
    (256, 48, 5, 2, 1, 2),
    (384, 256, 3, 1, 1, 1),
    (384, 192, 3, 2, 1, 1),
    (256, 192, 3, 2, 1, 1),
]
FCS = [(4096, 9216), (4096, 4096)]  # fc8: (classes, 4096)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # Caffe's examples (classify.py, the model zoo's deploy notes)
# The accuracy published for exactly these files, and only for them (a file of any other bytes, random weights
# in AlexNet's shapes included, carries no published figures). BVLC's model zoo (models/bvlc_alexnet/readme.md)
# lists the caffemodel's SHA-1 and its ILSVRC-2012 validation accuracy, 57.1 % top-1 and 80.2 % top-5 with the
# centre crop. The ONNX model zoo's fp32 bvlcalexnet-N.onnx are that snapshot converted (its alexnet README: "Caffe
# BVLC AlexNet ==> Caffe2 AlexNet ==> ONNX AlexNet", "obtains a top-1 accuracy 57.1% and a top-5 accuracy 80.2%
# ... using just the center crop"); their SHA-256s are the zoo's ONNX_HUB_MANIFEST.json "model_sha" (and the
# Git LFS pointers). Its table's 54.80 / 78.23 % for opset 12 was measured with another preprocessing (Intel
# Neural Compressor's), not Caffe's, which import-weights reproduces. The int8 and qdq files are not importable.
_BVLC = {"top1": 0.571, "top5": 0.802, "tta": "center"}  # tta: the views measured (TTA_CHOICES)
PUBLISHED = {
    ("sha1", "9116a64c0fbe4459d18f4bb6b56d647b63920377"): "Caffe bvlc_alexnet",
    **{("sha256", digest): f"Caffe bvlc_alexnet as the ONNX model zoo's {name}" for name, digest in (
        ("bvlcalexnet-3.onnx", "e9e222ef55ba873b219f22987130fb0567cb7bc7d3f1afeb47ff442bc0e11b6d"),
        ("bvlcalexnet-6.onnx", "f1ae53b93d83dd74731c84337ae64035288ce336794a46e2b17b56e7566feaab"),
        ("bvlcalexnet-7.onnx", "d9c9134b90c760d4231e89ad9758bcc8a9397c3ba1cd56fadbef888b534ac6b4"),
        ("bvlcalexnet-8.onnx", "9a4dc22fd706a19462aaec3b08e027e0ef89daf63d123824f20b59b6de9a727b"),
        ("bvlcalexnet-9.onnx", "ef3c82dad5c512f969dbf701fe35c0b3feb1585687d541f765eb68730c0a8af7"),
        ("bvlcalexnet-12.onnx", "6b0da9510f27f234ee96a85dc3809dd210150fdefad87f6850f9788513216945"))},
}  # fmt: skip


def published_for(path: Path) -> dict[str, Any] | None:
    """The accuracy published for the file at ``path``, identified by its checksum; None for any other file."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha1.update(chunk)
            sha256.update(chunk)
    what = PUBLISHED.get(("sha1", sha1.hexdigest())) or PUBLISHED.get(("sha256", sha256.hexdigest()))
    return None if what is None else _BVLC | {"what": f"{what}, ILSVRC-2012 val, centre crop"}


@dataclass
class SourceNet:
    """What an imported file holds, in graph order, before any conversion."""

    convs: list[tuple[np.ndarray, np.ndarray, int, int, int]]  # weight (out, in / g, k, k), bias, g, stride, pad
    fcs: list[tuple[np.ndarray, np.ndarray]]  # weight (out, in), bias
    lrns: list[LRNSpec]
    order: list[str]  # conv | lrn | pool | fc
    source: str


def check_structure(net: SourceNet) -> None:
    """One clear line for anything that is not AlexNet."""
    src = net.source
    if net.order != ORDER:
        raise UserError(f"{src}: layer order {' '.join(net.order) or '(none)'} is not AlexNet's ({' '.join(ORDER)})")
    for i, ((w, b, *got), (o, c, k, *want)) in enumerate(zip(net.convs, CONVS), 1):
        if w.shape != (o, c, k, k) or b.shape != (o,) or got != want:
            raise UserError(f"{src}: conv{i} is {w.shape} with (groups, stride, pad) {tuple(got)}; AlexNet's is "
                            f"{(o, c, k, k)} with {tuple(want)}")  # fmt: skip
    for i, (w, b) in enumerate(net.fcs):
        shape = FCS[i] if i < 2 else (w.shape[0], 4096)
        if w.shape != shape or b.shape != (w.shape[0],) or w.shape[0] < 1:
            raise UserError(f"{src}: fc{i + 6} weight is {w.shape}; AlexNet's is {shape}")
    if any(lrn != net.lrns[0] for lrn in net.lrns):
        raise UserError(f"{src}: the two LRN layers differ ({net.lrns}); AlexNet uses one setting")


def to_loaded(net: SourceNet, mean_image_bgr: np.ndarray | None = None,
              published: dict[str, Any] | None = None) -> Loaded:  # fmt: skip
    """The checked network as an ``alexnet`` model (RGB, [0, 1] pixels) with its preprocessing and class names;
    ``published``: the source file's own published accuracy (``published_for``)."""
    check_structure(net)
    classes = net.fcs[2][0].shape[0]
    lrn = net.lrns[0]
    options: dict[str, Any] = {"lrn_size": lrn.size, "lrn_alpha": lrn.alpha, "lrn_beta": lrn.beta, "lrn_k": lrn.k,
                               "lrn_groups": 1}  # fmt: skip
    model = create_model("alexnet", classes, init="default", **options)
    state = {}
    for i, (w, b, *_) in enumerate(net.convs, 1):
        t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        if i == 1:
            t = t.flip(1) * 255.0  # BGR -> RGB, 0-255 -> [0, 1]
        state[f"features.conv{i}.weight"], state[f"features.conv{i}.bias"] = t, torch.from_numpy(b.astype(np.float32))
    for name, (w, b) in zip(("fc6", "fc7", "fc8"), net.fcs):
        state[f"classifier.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[f"classifier.{name}.bias"] = torch.from_numpy(b.astype(np.float32))
    model.load_state_dict(state)
    if mean_image_bgr is not None:
        mi = torch.from_numpy(np.ascontiguousarray(mean_image_bgr[::-1], dtype=np.float32)) / 255.0  # (3, H, W) RGB
        pre = Preprocess(mi.shape[-1], 227, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), mi)
    else:
        blue, green, red = (v / 255.0 for v in CAFFE_MEAN_BGR)
        pre = Preprocess(256, 227, (red, green, blue), (1.0, 1.0, 1.0))
    names = [w for w, _ in imagenet_classes()] if classes == 1000 else [f"class_{i}" for i in range(classes)]
    return Loaded(model.eval(), "alexnet", names, pre, None, net.source, options, published)


def read_caffemodel(path: Path) -> SourceNet:
    from google.protobuf.message import DecodeError

    from . import caffe_proto

    try:
        net = caffe_proto.parse("NetParameter", path.read_bytes())
    except DecodeError as e:
        raise UserError(f"{path}: not a Caffe model (protobuf: {e})") from None
    v1 = len(net.layer) == 0
    out = SourceNet([], [], [], [], str(path))
    kinds = {"Convolution": "conv", "LRN": "lrn", "Pooling": "pool", "InnerProduct": "fc"}
    for layer in net.layers if v1 else net.layer:
        kind = kinds.get(caffe_proto.layer_type(layer, v1))
        if kind is None:
            continue
        out.order.append(kind)
        blobs = [caffe_proto.blob_values(b) for b in layer.blobs]
        shapes = [caffe_proto.blob_shape(b) for b in layer.blobs]
        if kind in ("conv", "fc") and len(blobs) != 2:
            raise UserError(f"{path}: layer {layer.name!r} has {len(blobs)} blobs; AlexNet's have weights and biases")
        if kind == "conv":
            p = layer.convolution_param
            w = _reshape(blobs[0], shapes[0], path, layer.name)
            out.convs.append(
                (w, blobs[1], int(p.group), int(p.stride[0]) if p.stride else 1, int(p.pad[0]) if p.pad else 0)
            )
        elif kind == "fc":  # weights (out, in); legacy files store them as (1, 1, out, in)
            w = _reshape(blobs[0], shapes[0], path, layer.name)
            out.fcs.append((w.reshape(w.shape[-2], w.shape[-1]) if w.ndim >= 2 else w, blobs[1]))
        elif kind == "lrn":
            p = layer.lrn_param
            if p.norm_region != 0:
                raise UserError(f"{path}: LRN {layer.name!r} is WITHIN_CHANNEL; AlexNet's is ACROSS_CHANNELS")
            out.lrns.append(LRNSpec(int(p.local_size), float(p.alpha), float(p.beta), float(p.k)))
    if not net.layer and not net.layers:
        raise UserError(f"{path}: no layers (not a Caffe model, or a solver state)")
    return out


def _reshape(values: np.ndarray, shape: tuple[int, ...], path: Path, name: str) -> np.ndarray:
    if not shape or int(np.prod(shape)) != values.size:
        raise UserError(f"{path}: layer {name!r} blob holds {values.size} values for shape {shape}")
    return values.reshape(shape)


def read_onnx(path: Path) -> SourceNet:
    """An ONNX graph of the same network (the model zoo's bvlcalexnet: grouped Conv, LRN, MaxPool, Gemm, Softmax)."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise missing_extra("importing ONNX", "export") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, OSError or its own errors on a bad file
        raise UserError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    meta = {m.key: m.value for m in model.metadata_props}
    if ONNX_KEY in meta or {"variant", "class_names", "preprocess"} <= set(meta):  # `alexnet export` wrote it
        variant = meta.get("variant") or _exported_variant(meta[ONNX_KEY])
        raise UserError(f"{path} was exported by this package ({variant}): its weights are in the run or "
                        ".safetensors file it was exported from, and `alexnet predict` and `evaluate` run it as it "
                        "is; import-weights reads the paper's network trained elsewhere (Caffe's bvlc_alexnet, the "
                        "ONNX model zoo's bvlcalexnet)")  # fmt: skip
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = SourceNet([], [], [], [], str(path))

    def weight(node: onnx.NodeProto, i: int) -> np.ndarray:
        if len(node.input) <= i or node.input[i] not in inits:
            raise UserError(f"{path}: {node.op_type} node {node.name!r} has no stored weight for input {i}")
        return inits[node.input[i]].astype(np.float32)

    for node in model.graph.node:  # ONNX stores nodes in topological order
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if node.op_type == "Conv":
            w = weight(node, 1)
            b = weight(node, 2) if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            pads, strides = list(a.get("pads", [0] * 4)), list(a.get("strides", [1, 1]))
            pad = pads[0] if len(set(pads)) == 1 else -1  # asymmetric padding is not AlexNet's
            out.convs.append((w, b, int(a.get("group", 1)), int(strides[0]) if len(set(strides)) == 1 else -1, pad))
            out.order.append("conv")
        elif node.op_type == "LRN":
            size = _required(a, "size", node, path)
            out.lrns.append(LRNSpec(int(size), float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)),
                                    float(a.get("bias", 1.0))))  # fmt: skip
            out.order.append("lrn")
        elif node.op_type == "MaxPool":
            _required(a, "kernel_shape", node, path)
            out.order.append("pool")
        elif node.op_type == "Gemm":
            w, b = weight(node, 1), weight(node, 2)
            w = w if a.get("transB", 0) else w.T  # y = x W^T + b with W (out, in)
            if a.get("transA", 0):
                raise UserError(f"{path}: Gemm {node.name!r} transposes its input; not AlexNet's layout")
            out.fcs.append((np.ascontiguousarray(w) * float(a.get("alpha", 1.0)), b * float(a.get("beta", 1.0))))
            out.order.append("fc")
    return out


def _required(attrs: dict[str, Any], name: str, node: Any, path: Path) -> Any:
    """An attribute the ONNX operator requires (it has no default): its absence is the file's fault, said once."""
    if name not in attrs:
        raise UserError(f"{path}: {node.op_type} node {node.name or '(unnamed)'!r} lacks its required attribute "
                        f"{name!r}: not a valid ONNX graph")  # fmt: skip
    return attrs[name]


def _exported_variant(text: str) -> str:
    try:
        return str(json.loads(text).get("variant", "?"))
    except (ValueError, AttributeError):
        return "?"


def read_mean_binaryproto(path: Path) -> np.ndarray:
    """Caffe's mean image (``ilsvrc_2012_mean.binaryproto``): (3, H, W), BGR, 0-255."""
    from google.protobuf.message import DecodeError

    from . import caffe_proto

    try:
        blob = caffe_proto.parse("BlobProto", Path(path).read_bytes())
    except (DecodeError, OSError) as e:
        raise UserError(f"{path}: not a readable Caffe mean file ({e})") from None
    shape, values = caffe_proto.blob_shape(blob), caffe_proto.blob_values(blob)
    shape = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(shape) != 3 or shape[0] != 3 or int(np.prod(shape)) != values.size or min(shape[1:]) < 227:
        raise UserError(f"{path}: a mean image must be 3 x H x W with H, W >= 227, got {shape}")
    return values.reshape(shape)


def read_torchvision_state(path: Path) -> Loaded:
    """torchvision's AlexNet from a pytorch/examples imagenet checkpoint (``{"arch": "alexnet", "state_dict": ...}``,
    its features wrapped in DataParallel: ``features.module.0.weight``) or a bare state_dict, read with
    ``weights_only=True``. 1000 classes are ImageNet's (ImageFolder's sorted wnids, the order pytorch/examples
    trains in), other counts are numbered; preprocessing is torchvision's (resize 256, centre crop 224, mean/std)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure: not a file this reads (weights_only refuses code)
        raise UserError(f"{path}: not a readable PyTorch weights file ({str(e).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise UserError(f"{path} is a checkpoint of an alexnet run: every command takes it as it is (`alexnet predict "
                        f"{path} IMAGE`, `--weights {path}`); `alexnet export` makes a weights file of it")  # fmt: skip
    if (state := plain_state_dict(obj)) is None:
        raise UserError(f"{path}: neither a state_dict nor a pytorch/examples checkpoint")
    if obj.get("arch", "alexnet") != "alexnet":
        raise UserError(f"{path}: a pytorch/examples checkpoint of {obj['arch']}, not alexnet")
    if "classifier.6.weight" not in state:
        raise UserError(f"{path}: not torchvision's AlexNet layout (no classifier.6.weight)")
    n = state["classifier.6.weight"].shape[0]
    names = [w for w, _ in imagenet_classes()] if n == 1000 else [str(i) for i in range(n)]
    model = model_from_state("alexnet_owt", n, state, {})
    return Loaded(model.eval(), "alexnet_owt", names, Preprocess.imagenet(), None, str(path))
