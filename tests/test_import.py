"""`alexnet import-weights`: Caffe's bvlc_alexnet layout (.caffemodel, current and V1 formats) and its ONNX
conversion, written here from a random network in Caffe's own conventions (BGR, 0-255, mean subtraction, grouped
convolutions, LRN over all maps with k=1, ceil-mode pooling, a final softmax). The .caffemodel bytes are written
with a hand-rolled protobuf encoder from caffe.proto's field numbers, so the reader's schema is checked, not
reused. The imported model, fed through this package's own preprocessing, must give the source's logits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet.cli import main
from alexnet.io.weights import load_weights

from .conftest import make_imagefolder

CLASSES = 10
# The reference network's layout, written out from Caffe's models/bvlc_alexnet/deploy.prototxt (BVLC, the model
# zoo's bvlc_alexnet), not from the code under test: convolution_param num_output, kernel_size, group, stride and
# pad per layer; the input channels a group sees are the previous layer's outputs divided by its group (3, 96/2,
# 256, 384/2, 384/2). Krizhevsky et al. 2012 Fig. 2 has the same maps and kernels (5 convolutions, two towers).
CONVS = [  # (num_output, input channels per group, kernel_size, group, stride, pad)
    (96, 3, 11, 1, 4, 0),  # conv1
    (256, 48, 5, 2, 1, 2),  # conv2
    (384, 256, 3, 1, 1, 1),  # conv3
    (384, 192, 3, 2, 1, 1),  # conv4
    (256, 192, 3, 2, 1, 1),  # conv5
]
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}  # deploy.prototxt's lrn_param; k is Caffe's default
# BGR mean pixel: ilsvrc_2012_mean.npy averaged per channel is (104.007, 116.669, 122.679), printed by Caffe's
# examples/00-classification.ipynb; Caffe's examples round it to mean_value 104, 117, 123
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


# --- protobuf wire format, by hand -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v)


def _float(field: int, v: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", v)


def _blob(a: np.ndarray, legacy: bool) -> bytes:
    if legacy:  # num, channels, height, width (fc weights as 1 x 1 x out x in, biases as 1 x 1 x 1 x n)
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(_int(f, d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = _len(7, _len(1, b"".join(_varint(d) for d in a.shape)))
    return head + _len(5, a.astype("<f4").tobytes())


# --- a random network in Caffe's layout --------------------------------------------------------------------


@pytest.fixture(scope="module")
def source() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w: dict[str, np.ndarray] = {}
    for i, (o, c, k, *_) in enumerate(CONVS, 1):
        w[f"conv{i}"] = rng.normal(0, (2 / (c * k * k)) ** 0.5 / (255 if i == 1 else 1), (o, c, k, k)).astype(
            np.float32
        )
        w[f"conv{i}_b"] = rng.normal(0, 0.1, o).astype(np.float32)
    for name, (o, i) in {"fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (CLASSES, 4096)}.items():
        w[name] = rng.normal(0, (2 / i) ** 0.5, (o, i)).astype(np.float32)
        w[name + "_b"] = rng.normal(0, 0.1, o).astype(np.float32)
    return w


def caffe_logits(w: dict[str, np.ndarray], bgr: torch.Tensor) -> torch.Tensor:
    """Caffe's forward pass: (B, 3, 227, 227) BGR, 0-255, mean already subtracted."""
    x = bgr
    for i, (_, _, _, g, stride, pad) in enumerate(CONVS, 1):
        x = F.relu(F.conv2d(x, torch.from_numpy(w[f"conv{i}"]), torch.from_numpy(w[f"conv{i}_b"]), stride, pad, 1, g))
        if i <= 2:  # across all maps, alpha / n, k = 1 (Caffe's LRN)
            x = F.local_response_norm(x, LRN["size"], LRN["alpha"], LRN["beta"], LRN["k"])
        if i in (1, 2, 5):
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)  # Caffe's pooling rounds up
    x = x.flatten(1)
    for name in ("fc6", "fc7", "fc8"):
        x = F.linear(x, torch.from_numpy(w[name]), torch.from_numpy(w[name + "_b"]))
        x = F.relu(x) if name != "fc8" else x
    return x


LAYERS = ["conv1", "relu", "norm", "pool", "conv2", "relu", "norm", "pool", "conv3", "relu", "conv4", "relu", "conv5",
          "relu", "pool", "fc6", "relu", "drop", "fc7", "relu", "drop", "fc8", "prob"]  # fmt: skip
V2_TYPES = {"conv": "Convolution", "relu": "ReLU", "norm": "LRN", "pool": "Pooling", "fc": "InnerProduct",
            "drop": "Dropout", "prob": "Softmax"}  # fmt: skip
V1_TYPES = {"conv": 4, "relu": 18, "norm": 15, "pool": 17, "fc": 14, "drop": 6, "prob": 20}


def write_caffemodel(w: dict[str, np.ndarray], path: Path, v1: bool, layers: list[str] = LAYERS) -> None:
    """NetParameter: ``layer`` (100) of LayerParameter, or V1 ``layers`` (2) with legacy 4-d blobs."""
    out = [_len(1, b"AlexNet")]
    for n, name in enumerate(layers):
        kind = name.rstrip("0123456789")
        body = b""
        if kind in ("conv", "fc"):
            blobs = b"".join(_len(6 if v1 else 7, _blob(w[k], v1)) for k in (name, name + "_b"))
            body += blobs
        if kind == "conv":
            i = int(name[-1]) - 1
            o, _, k, g, stride, pad = CONVS[i]
            conv = (
                _int(1, o)
                + (_int(3, pad) if pad else b"")
                + _int(4, k)
                + (_int(5, g) if g > 1 else b"")
                + (_int(6, stride) if stride > 1 else b"")
            )
            body += _len(10 if v1 else 106, conv)
        if kind == "norm":  # k left at Caffe's default (1)
            body += _len(18 if v1 else 118, _int(1, LRN["size"]) + _float(2, LRN["alpha"]) + _float(3, LRN["beta"]))
        if v1:
            out.append(_len(2, _len(4, f"{name}{n}".encode()) + _int(5, V1_TYPES[kind]) + body))
        else:
            out.append(_len(100, _len(1, f"{name}{n}".encode()) + _len(2, V2_TYPES[kind].encode()) + body))
    path.write_bytes(b"".join(out))


def _image() -> torch.Tensor:
    """uint8 (1, 3, 256, 256) RGB with structure (a gradient and a square), already at the resize size."""
    g = torch.linspace(0, 255, 256)
    img = torch.stack([g[None, :].expand(256, 256), g[:, None].expand(256, 256), torch.full((256, 256), 90.0)])
    img[:, 80:170, 60:150] = torch.tensor([200.0, 30.0, 60.0])[:, None, None]
    return img.round().to(torch.uint8)[None]


def imported_logits(path: Path, img: torch.Tensor) -> torch.Tensor:
    """This package's own path: the weights' preprocessing, centre crop, the model."""
    w = load_weights(str(path), "cpu")
    norm = w.preprocess.normalizer()
    x = norm.finish(norm.scale(img))
    off = (img.shape[-1] - w.preprocess.crop) // 2
    with torch.no_grad():
        return w.model(x[..., off : off + 227, off : off + 227])


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
def test_caffemodel_import_gives_caffes_logits(source: dict[str, np.ndarray], tmp_path: Path, v1: bool) -> None:
    model, out = tmp_path / "bvlc_alexnet.caffemodel", tmp_path / "imported.safetensors"
    write_caffemodel(source, model, v1)
    assert main(["import-weights", str(model), "--out", str(out)]) == 0
    img = _image()
    mean = torch.tensor(CAFFE_MEAN_BGR)[:, None, None]
    want = caffe_logits(source, (img[:, [2, 1, 0]].float() - mean)[..., 14:241, 14:241])
    got = imported_logits(out, img)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    w = load_weights(str(out))
    assert w.options["lrn_k"] == 1.0 and w.options["lrn_groups"] == 1


def test_mean_image_and_refusals(source: dict[str, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, out = tmp_path / "m.caffemodel", tmp_path / "mi.safetensors"
    write_caffemodel(source, model, v1=False)
    mean_bgr = np.random.default_rng(1).uniform(80, 140, (3, 256, 256)).astype(np.float32)
    meanfile = tmp_path / "ilsvrc_2012_mean.binaryproto"
    meanfile.write_bytes(_blob(mean_bgr[None], legacy=True))
    assert main(["import-weights", str(model), "--out", str(out), "--mean", str(meanfile)]) == 0
    img = _image()
    want = caffe_logits(source, (img[:, [2, 1, 0]].float() - torch.from_numpy(mean_bgr))[..., 14:241, 14:241])
    torch.testing.assert_close(imported_logits(out, img), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    capsys.readouterr()
    # CaffeNet's order (pool before norm), a wrong shape, junk bytes, an existing output: one line each, exit 2
    caffenet = [*LAYERS[:2], "pool", "norm", *LAYERS[4:]]
    write_caffemodel(source, tmp_path / "caffenet.caffemodel", v1=False, layers=caffenet)
    bad = dict(source, conv2=source["conv2"][:, :24].copy())
    write_caffemodel(bad, tmp_path / "bad.caffemodel", v1=False)
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff" * 64)
    for name, needle in [("caffenet", "layer order"), ("bad", "conv2"), ("junk", "not a Caffe model")]:
        assert (
            main(["import-weights", str(tmp_path / f"{name}.caffemodel"), "--out", str(tmp_path / "x.safetensors")])
            == 2
        )
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["import-weights", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2  # a folder
    assert f"{tmp_path} is a directory; give the .caffemodel or .onnx file in it" in capsys.readouterr().err
    before = out.read_bytes()
    assert main(["import-weights", str(model), "--out", str(out)]) == 2  # exists: never overwritten
    assert out.read_bytes() == before


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
def test_a_renamed_caffemodel_is_known_by_its_content(source: dict[str, np.ndarray], tmp_path: Path, v1: bool,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """bvlc_alexnet.caffemodel saved as model.pt: every command that takes weights names it a Caffe model (it once
    said "corrupt or truncated checkpoint"), and import-weights converts it as it converts the .caffemodel."""
    model = tmp_path / "bvlc_alexnet.caffemodel"
    write_caffemodel(source, model, v1)
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(model.read_bytes())
    for cmd in (["evaluate", str(renamed), "--data", str(tmp_path)], ["train", "--resume", str(renamed)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{renamed} is a Caffe model, by its content: convert it once" in err, err
    assert main(["import-weights", str(model), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main(["import-weights", str(renamed), "--out", str(tmp_path / "b.safetensors")]) == 0
    a, b = load_weights(str(tmp_path / "a.safetensors")), load_weights(str(tmp_path / "b.safetensors"))
    assert a.options == b.options and a.preprocess == b.preprocess
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_onnx_import_matches_onnxruntime(source: dict[str, np.ndarray], tmp_path: Path) -> None:
    """The model zoo's layout: input data_0, grouped Conv, LRN, MaxPool, Flatten, Gemm (transB), Softmax."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "data_0"
    for i, (_, _, _, g, stride, pad) in enumerate(CONVS, 1):
        inits += [numpy_helper.from_array(source[f"conv{i}"], f"conv{i}_w_0"),
                  numpy_helper.from_array(source[f"conv{i}_b"], f"conv{i}_b_0")]  # fmt: skip
        nodes.append(helper.make_node("Conv", [x, f"conv{i}_w_0", f"conv{i}_b_0"], [f"conv{i}_1"], group=g,
                                      strides=[stride] * 2, pads=[pad] * 4, kernel_shape=list(source[f"conv{i}"].shape[2:])))  # fmt: skip
        nodes.append(helper.make_node("Relu", [f"conv{i}_1"], [f"relu{i}_1"]))
        x = f"relu{i}_1"
        if i <= 2:
            nodes.append(helper.make_node("LRN", [x], [f"norm{i}_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0))
            x = f"norm{i}_1"
        if i in (1, 2, 5):
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}_1"], kernel_shape=[3, 3], strides=[2, 2]))
            x = f"pool{i}_1"
    nodes.append(helper.make_node("Flatten", [x], ["flat_1"]))
    x = "flat_1"
    for name in ("fc6", "fc7", "fc8"):
        inits += [
            numpy_helper.from_array(source[name], f"{name}_w_0"),
            numpy_helper.from_array(source[name + "_b"], f"{name}_b_0"),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"{name}_w_0", f"{name}_b_0"], [f"{name}_1"], transB=1))
        x = f"{name}_1"
        if name != "fc8":
            nodes.append(helper.make_node("Relu", [x], [f"{name}_relu_1"]))
            x = f"{name}_relu_1"
    nodes.append(helper.make_node("Softmax", [x], ["prob_1"]))
    graph = helper.make_graph(nodes, "bvlcalexnet", [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 227, 227])],
                              [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, CLASSES])], inits)  # fmt: skip
    path, out = tmp_path / "bvlcalexnet-12.onnx", tmp_path / "from_onnx.safetensors"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), str(path))
    assert main(["import-weights", str(path), "--out", str(out)]) == 0
    img = _image()
    bgr = (img[:, [2, 1, 0]].float() - torch.tensor(CAFFE_MEAN_BGR)[:, None, None])[..., 14:241, 14:241]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data_0": bgr.numpy()})[0]
    got = imported_logits(out, img).softmax(-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert json.loads(json.dumps(load_weights(str(out)).class_names))[:2] == ["class_0", "class_1"]
    renamed = tmp_path / "bvlcalexnet.bin"  # the same file under another name: known by its content
    renamed.write_bytes(path.read_bytes())
    assert main(["import-weights", str(renamed), "--out", str(tmp_path / "renamed.safetensors")]) == 0
    np.testing.assert_array_equal(imported_logits(tmp_path / "renamed.safetensors", img).softmax(-1).numpy(), got)


def test_imported_weights_evaluate_and_fine_tune(source: dict[str, np.ndarray], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A weights file evaluates with --data and starts a training run whose config takes the weights' LRN
    settings and normalisation."""
    from alexnet.io import checkpoint as ckpt_io

    from .conftest import FAST, make_imagefolder

    model, out = tmp_path / "m.caffemodel", tmp_path / "w.safetensors"
    write_caffemodel(source, model, v1=False)
    assert main(["import-weights", str(model), "--out", str(out)]) == 0
    data = make_imagefolder(tmp_path / "ten", classes=CLASSES, per_class=1, val_per_class=1, size=(240, 230))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(data), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == CLASSES
    assert main(["evaluate", str(out), "--device", "cpu"]) == 2  # a weights file does not know its data
    run = tmp_path / "ft"
    args = ["train", "--data", str(data), "--out", str(run), *FAST, "--weights", str(out), "--lr", "1e-12"]
    assert main(args) == 0
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    m = ck["config"]["model"]
    assert m["lrn_groups"] == 1 and m["lrn_k"] == 1.0 and ck["config"]["data"]["std"] == [1.0, 1.0, 1.0]
    start = load_weights(str(out)).model.state_dict()
    for k in ("features.conv1.weight", "classifier.fc6.weight", "classifier.fc8.weight"):  # same classes: fc8 kept
        torch.testing.assert_close(ck["model"][k], start[k], rtol=1e-5, atol=1e-6)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), *FAST, "--model", "alexnet_bn",
                 "--weights", str(out)]) == 2  # fmt: skip


def test_a_pytorch_examples_checkpoint_imports_as_torchvisions_alexnet(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """What pytorch/examples' imagenet/main.py --arch alexnet saves (features wrapped in DataParallel, with epoch,
    arch and best_acc1 beside the state_dict), and a bare state_dict of 1000 classes: imported as alexnet_owt whose
    logits are the source's, classes numbered or ImageNet's. Given to predict directly, it says how."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = tv.models.alexnet(num_classes=CLASSES).eval()
    wrapped = tv.models.alexnet(num_classes=CLASSES)
    wrapped.load_state_dict(net.state_dict())
    wrapped.features = torch.nn.DataParallel(wrapped.features)
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {"epoch": 90, "arch": "alexnet", "state_dict": wrapped.state_dict(), "best_acc1": torch.tensor(56.5)}, ckpt
    )
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(image)]) == 2
    assert "pytorch/examples imagenet checkpoint (arch alexnet): convert it once with" in capsys.readouterr().err
    out = tmp_path / "examples.safetensors"
    assert main(["import-weights", str(ckpt), "--out", str(out)]) == 0
    w = load_weights(str(out))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(w.model(x), net(x))
    assert w.variant == "alexnet_owt" and w.class_names == [str(i) for i in range(CLASSES)]
    assert (w.preprocess.resize, w.preprocess.crop) == (256, 224)
    bare = tmp_path / "bare.pth"
    torch.save(tv.models.alexnet().state_dict(), bare)
    assert main(["import-weights", str(bare), "--out", str(tmp_path / "bare.safetensors")]) == 0
    assert load_weights(str(tmp_path / "bare.safetensors")).class_names[0] == "n01440764"  # ImageNet's first wnid
    torch.save({"arch": "resnet18", "state_dict": {"fc.weight": torch.ones(1)}}, tmp_path / "r.pth")
    assert main(["import-weights", str(tmp_path / "r.pth"), "--out", str(tmp_path / "r.safetensors")]) == 2
    assert "a pytorch/examples checkpoint of resnet18, not alexnet" in capsys.readouterr().err
    # this package's own files need no import (both were "unknown format" / "neither a state_dict nor ...")
    ours = tmp_path / "last.pt"
    torch.save({"format": "alexnet-checkpoint/1", "model": net.state_dict(), "global_step": 3}, ours)
    for given, says in ((out, "is a safetensors weights file, this package's own format: every command takes it"),
                        (ours, "is a checkpoint of an alexnet run: every command takes it as it is")):  # fmt: skip
        assert main(["import-weights", str(given), "--out", str(tmp_path / "again.safetensors")]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert not (tmp_path / "again.safetensors").exists()


def test_published_figures_only_for_the_published_file(source: dict[str, np.ndarray], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Every .caffemodel (and ONNX file) in AlexNet's shapes was stamped with BVLC's 57.1 / 80.2 %, which
    `evaluate` then printed beside its own results, for random weights too. Only the published file, known by
    the checksum its model zoo lists, carries them."""
    import hashlib

    from alexnet.io import foreign

    # BVLC's model zoo, models/bvlc_alexnet/readme.md: "sha1: 9116a64c0fbe4459d18f4bb6b56d647b63920377", and
    # "top-1 accuracy 57.1% and a top-5 accuracy 80.2% on the validation set, using just the center crop"
    bvlc = foreign.PUBLISHED[("sha1", "9116a64c0fbe4459d18f4bb6b56d647b63920377")]
    assert "bvlc_alexnet" in bvlc
    model, out = tmp_path / "bvlc_alexnet.caffemodel", tmp_path / "w.safetensors"
    write_caffemodel(source, model, v1=False)  # random weights, named as the published file is
    assert main(["import-weights", str(model), "--out", str(out)]) == 0
    assert "not the published file" in capsys.readouterr().out
    assert load_weights(str(out)).published is None
    data = make_imagefolder(tmp_path / "ten", classes=CLASSES, per_class=0, val_per_class=1, size=(240, 230))
    assert main(["evaluate", str(out), "--data", str(data), "--json", "--device", "cpu"]) == 0
    assert "published" not in json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--data", str(data), "--device", "cpu"]) == 0
    assert "  published, " not in capsys.readouterr().out  # (the test folder is named "published")
    # the file whose checksum is the published one's (here: this file's, put in the table) is stamped
    digest = hashlib.sha1(model.read_bytes()).hexdigest()
    monkeypatch.setitem(foreign.PUBLISHED, ("sha1", digest), bvlc)
    assert main(["import-weights", str(model), "--out", str(out), "--force"]) == 0
    assert load_weights(str(out)).published == {"top1": 0.571, "top5": 0.802, "tta": "center",
                                                "what": "Caffe bvlc_alexnet, ILSVRC-2012 val, centre crop"}  # fmt: skip
    assert main(["evaluate", str(out), "--data", str(data), "--device", "cpu"]) == 0
    out_text = capsys.readouterr().out
    assert "published, Caffe bvlc_alexnet, ILSVRC-2012 val, centre crop: top-1 accuracy 57.1 %" in out_text
    assert "a different protocol" not in out_text  # centre crop both
    assert main(["evaluate", str(out), "--data", str(data), "--device", "cpu", "--tta", "flip"]) == 0
    assert "the published figures are from the centre crop, this result from the centre crop and its mirror" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("op, attrs, missing", [("LRN", {"alpha": 1e-4, "beta": 0.75}, "size"),
                                                ("MaxPool", {"strides": [2, 2]}, "kernel_shape")])  # fmt: skip
def test_an_onnx_node_without_a_required_attribute_is_named(op: str, attrs: dict, missing: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """An LRN without `size` ended in "KeyError: 'size' (an unexpected failure...)": one line names the node and
    the attribute the operator requires."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 96, 55, 55])  # noqa: E731
    node = helper.make_node(op, ["x"], ["y"], name="norm1", **attrs)
    path = tmp_path / "bvlcalexnet-12.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [value("x")], [value("y")])), str(path))
    assert main(["import-weights", str(path), "--out", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{op} node 'norm1' lacks its required attribute '{missing}'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "w.safetensors").exists()
