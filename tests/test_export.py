"""Exports that carry their preprocessing, and ONNX files as weights.

A program that knows nothing of this package reads an ONNX file's metadata, preprocesses real photographs by it
alone (numpy and PIL, written here from the documented steps, not from the package's code), runs the file in
onnxruntime, and must get `alexnet predict`'s top-5 and logits. Then `predict` and `evaluate` run the same files
themselves and must agree with the PyTorch path."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from alexnet.cli import main

from .conftest import SHARED_DATA, make_imagefolder

SAMPLES = SHARED_DATA / "imagenet-samples"
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One random network (He init, its last layer scaled so that the classes' scores lie apart) with channel
    mean/std and with a mean image of another size than the resize (the normaliser resamples it), as weights
    files; and three ONNX exports: the mean-image one plain and --with-preprocess, the channel one
    --with-preprocess."""
    pytest.importorskip("onnxruntime")
    from alexnet import create_model
    from alexnet.data.preprocess import Preprocess
    from alexnet.io.weights import Loaded, save_safetensors

    d = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = create_model("alexnet", len(CLASSES), init="kaiming").eval()
    with torch.no_grad():
        model.classifier.fc8.weight.mul_(300.0)
    g = torch.Generator().manual_seed(1)
    mean_image = 0.35 + 0.3 * torch.rand(3, 80, 80, generator=g)
    for name, mi in (("ch", None), ("mi", mean_image)):
        pre = Preprocess(72, 67, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), mi)
        save_safetensors(Loaded(model, "alexnet", CLASSES, pre, None, "test"), d / f"{name}.safetensors")
    files = {"ch": d / "ch.safetensors", "mi": d / "mi.safetensors"}
    for name, src, flags in (("mi.onnx", "mi", []), ("mi_u8.onnx", "mi", ["--with-preprocess"]),
                             ("ch_u8.onnx", "ch", ["--with-preprocess"])):  # fmt: skip
        assert main(["export", str(files[src]), "--out", str(d / name), *flags]) == 0
        files[name] = d / name
    yield files
    shutil.rmtree(d, ignore_errors=True)  # its checkpoints: RAM the next files need (tests/conftest.py)


def _metadata(path: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return json.loads(session.get_modelmeta().custom_metadata_map["alexnet"])


def consumer_input(meta: dict, image: Path) -> np.ndarray:
    """What the export metadata's documented steps make of one image file, in numpy and PIL alone."""
    pre = meta["preprocess"]
    r, c = pre["resize"], pre["crop"]
    with Image.open(image) as im:
        im = ImageOps.exif_transpose(im).convert(pre["colour"])
    w, h = im.size
    long = int(r * max(w, h) / min(w, h))  # shorter side to r, the longer one scaled alike, rounded down
    im = im.resize((r, long) if w <= h else (long, r), Image.BILINEAR)
    left, top = int(round((im.size[0] - r) / 2)), int(round((im.size[1] - r) / 2))
    square = np.asarray(im.crop((left, top, left + r, top + r)))  # (r, r, 3) uint8
    o = int(round((r - c) / 2))
    crop = square[o : o + c, o : o + c]
    if pre["in_graph"]:
        return crop[None]  # (1, c, c, 3) uint8
    x = crop.astype(np.float32).transpose(2, 0, 1) * np.float32(pre["scale"])
    if pre["normalize"] == "channel":
        mean, std = (np.array(pre[k], np.float32)[:, None, None] for k in ("mean", "std"))
        x = (x - mean) / std
    else:
        mi = pre["mean_image"]
        assert (mi["dtype"], mi["byte_order"]) == ("float32", "little")
        mean_image = np.frombuffer(base64.b64decode(mi["base64"]), "<f4").reshape(mi["shape"])
        x = x - mean_image[:, o : o + c, o : o + c]
    return x[None].astype(np.float32)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs ../shared/data/imagenet-samples")
def test_a_program_that_reads_the_metadata_alone_gets_predicts_results(exported: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A mean-image model's ONNX export once said "mean [0, 0, 0], std [1, 1, 1]" (the mean image dropped): a
    consumer following it got other logits and top classes. Now each export's metadata is enough, the mean
    image and graphs that normalise inside (uint8 NHWC crops) included."""
    import onnxruntime as ort

    images = sorted(SAMPLES.iterdir())[::25][:10]  # JPEGs of several sizes, greyscale ones among them
    sources = {"mi.onnx": "mi", "mi_u8.onnx": "mi", "ch_u8.onnx": "ch"}
    for onnx_name, src in sources.items():
        weights = str(exported[src])
        assert main(["features", weights, *map(str, images), "--layer", "logits", "--amp", "none", "--out",
                     str(tmp_path / f"{onnx_name}.npz")]) == 0  # fmt: skip
        want = np.load(tmp_path / f"{onnx_name}.npz")["features"]
        capsys.readouterr()
        assert main(["predict", weights, *map(str, images), "--json", "--amp", "none"]) == 0
        top5 = [[t["index"] for t in json.loads(line)["top"]] for line in capsys.readouterr().out.splitlines()]
        meta = _metadata(exported[onnx_name])
        assert meta["alexnet_format"] == "alexnet-export/1" and meta["class_names"] == CLASSES
        pre = meta["preprocess"]
        assert pre["normalize"] == ("mean_image" if src == "mi" else "channel")
        assert ("mean" in pre) == (src == "ch")  # a mean-image model names no mean/std to misapply
        assert pre["in_graph"] == onnx_name.endswith("_u8.onnx")
        assert (meta["input"]["dtype"], meta["input"]["layout"]) == (("uint8", "NHWC") if pre["in_graph"]
                                                                     else ("float32", "NCHW"))  # fmt: skip
        session = ort.InferenceSession(str(exported[onnx_name]), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {meta["input"]["name"]: consumer_input(meta, f)})[0] for f in images])
        assert float(np.abs(want).std()) > 1.0  # the scores lie apart: top-5 is not decided by rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
        assert [list(np.argsort(-row)[:5]) for row in got] == top5, onnx_name


def test_the_pt2_program_carries_the_mean_image(exported: dict[str, Path], tmp_path: Path) -> None:
    """The .pt2 program's alexnet.json is the same document: its mean image is the one the normaliser uses."""
    from alexnet.io.weights import load_weights

    out = tmp_path / "mi.pt2"
    assert main(["export", str(exported["mi"]), "--out", str(out), "--with-preprocess"]) == 0
    extra = {"alexnet.json": ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    meta = json.loads(extra["alexnet.json"])
    mi = meta["preprocess"]["mean_image"]
    got = np.frombuffer(base64.b64decode(mi["base64"]), "<f4").reshape(mi["shape"])
    pre = load_weights(str(exported["mi"])).preprocess
    want = torch.nn.functional.interpolate(pre.mean_image[None], size=(72, 72), mode="bilinear")[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)
    x = torch.randint(0, 256, (2, 67, 67, 3), dtype=torch.uint8)
    with torch.no_grad():  # the program on uint8 crops = the network on the crops minus the mean image's centre
        ref = load_weights(str(exported["mi"])).model(x.permute(0, 3, 1, 2).float() / 255 - want[:, 2:69, 2:69])
        torch.testing.assert_close(program(x), ref, rtol=1e-4, atol=1e-3)
    assert (meta["input"]["dtype"], meta["input"]["layout"]) == ("uint8", "NHWC")


def _table(text: str) -> list[list[str]]:
    """The predict table without its probability column (the same to 1e-6, which may round either way)."""
    return [line.rsplit(None, 1)[0].split() for line in text.splitlines()]


def test_predict_and_evaluate_run_our_onnx_exports(exported: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`alexnet predict MODEL.onnx` and `evaluate MODEL.onnx` (refused before: "convert it once with
    import-weights") run the file in onnxruntime with the preprocessing it carries: the PyTorch path's output,
    in its format."""
    data = make_imagefolder(tmp_path / "data", classes=5, per_class=1, val_per_class=2, size=(96, 80))
    split = data / "val"
    for d in split.iterdir():
        d.rename(split / f"c{d.name.rsplit('_', 1)[1]}")
    images = sorted(str(p) for p in split.rglob("*.png"))
    for onnx_name, src in (("mi.onnx", "mi"), ("mi_u8.onnx", "mi"), ("ch_u8.onnx", "ch")):
        outs = []
        for weights, amp in ((exported[src], ["--amp", "none"]), (exported[onnx_name], [])):
            capsys.readouterr()
            assert main(["predict", str(weights), *images, *amp]) == 0
            table = capsys.readouterr().out
            assert main(["predict", str(weights), *images, "--json", *amp]) == 0
            rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            tta = ["center"] if onnx_name == "mi_u8.onnx" else ["center", "10crop"]
            evals = []
            for views in tta:
                assert main(["evaluate", str(weights), "--split-dir", str(split), "--json", "--tta", views, *amp]) == 0
                evals.append(json.loads(capsys.readouterr().out))
            outs.append((table, rows, evals))
        (t_pt, r_pt, e_pt), (t_onnx, r_onnx, e_onnx) = outs
        assert _table(t_onnx) == _table(t_pt) and len(r_onnx) == len(images)
        for a, b in zip(r_pt, r_onnx, strict=True):
            assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]], onnx_name
            assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-4)
        for a, b in zip(e_pt, e_onnx, strict=True):
            assert (a["n"], a["top1"], a["top5"], a["per_class"]) == (b["n"], b["top1"], b["top5"], b["per_class"])
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # what an ONNX graph cannot do is said in one line: its mean image's centre window, precision, the towers
    image = images[0]
    for args, words in ((["predict", str(exported["mi_u8.onnx"]), image, "--tta", "flip"], "takes centre crops only"),
                        (["predict", str(exported["ch_u8.onnx"]), image, "--amp", "bf16"], "runs in float32"),
                        (["predict", str(exported["mi.onnx"]), image, "--towers", "cpu,cpu"], "runs whole"),
                        (["features", str(exported["mi.onnx"]), image, "--out", str(tmp_path / "f.npz")],
                         "`alexnet predict` and `alexnet evaluate` run this package's ONNX exports")):  # fmt: skip
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_an_export_of_an_earlier_version_is_named(exported: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """An ONNX file with the flat keys this package once wrote (its preprocessing without the mean image) is not
    run with what it lacks: it is named, with how to export it again."""
    import onnx

    model = onnx.load(str(exported["ch_u8.onnx"]))
    keep = [p for p in model.metadata_props if p.key != "alexnet"]
    del model.metadata_props[:]
    for key, value in (("variant", "alexnet"), ("class_names", json.dumps(CLASSES)),
                       ("preprocess", json.dumps({"resize": 72, "crop": 67, "mean": [0, 0, 0], "std": [1, 1, 1]}))):  # fmt: skip
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.metadata_props.extend(keep)
    onnx.save(model, str(tmp_path / "old.onnx"))
    shutil.copy(exported["ch"], tmp_path / "ch.safetensors")
    image = tmp_path / "x.png"
    Image.new("RGB", (80, 90), (120, 30, 200)).save(image)
    assert main(["predict", str(tmp_path / "old.onnx"), str(image)]) == 2
    assert "exported by an earlier version of this package" in capsys.readouterr().err
