"""Using a trained network: predict, features, export, pretrained weights, safe loading."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from alexnet import create_model
from alexnet.cli import main


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real (short) run of the built-in demo, the paper's network: 3 epochs at batch 32 (135 steps) reached
    91.9 % val top-1 in 75 s on the 2-core CPU, where the fixture's earlier 5 epochs at the demo's batch 64 (115
    steps) took 100 s for 93.6 %."""
    run = tmp_path_factory.mktemp("digits") / "run"
    args = ["train", "--out", str(run), "--epochs", "3", "--batch-size", "32", "--set", "schedule.warmup_epochs=1"]
    assert main(args) == 0
    yield run
    shutil.rmtree(run.parent, ignore_errors=True)  # its checkpoints: RAM the next files need (tests/conftest.py)


@pytest.fixture(scope="session")
def val_digit_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """60 held-out digits as the 8x8 greyscale PNGs a user would have."""
    from sklearn.datasets import load_digits

    from alexnet.data.digits import split_indices

    d = load_digits()
    _, val = split_indices(torch.from_numpy(d.target), 0.2, seed=0)
    out = tmp_path_factory.mktemp("digit_pngs")
    files = []
    for i in val[::6][:60].tolist():
        p = out / f"digit_{i}.png"
        Image.fromarray((d.images[i] * 255 / 16).round().astype(np.uint8), "L").save(p)
        files.append((p, int(d.target[i])))
    return files


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines()]


def test_predict_digits(digits_run: Path, val_digit_files: list, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["predict", str(digits_run), *[str(p) for p, _ in val_digit_files], "--json", "--topk", "3"]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert len(rows) == len(val_digit_files)
    truth = {str(p): y for p, y in val_digit_files}
    right = sum(r["top"][0]["index"] == truth[r["file"]] for r in rows)
    assert right / len(rows) >= 0.8
    r = rows[0]
    assert len(r["top"]) == 3 and r["top"][0]["class"] == str(r["top"][0]["index"])
    assert r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]


def test_evaluate_a_digits_run_on_other_images(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--split-dir on a run of the built-in digits evaluates those class folders (it evaluated the built-in
    validation split instead, whatever folder was named, even a missing one)."""
    for p, y in val_digit_files[:20]:
        (tmp_path / "mine" / str(y)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "mine" / str(y) / p.name).write_bytes(p.read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(digits_run), "--split-dir", str(tmp_path / "mine"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    assert main(["evaluate", str(digits_run), "--split-dir", str(tmp_path / "missing")]) == 2
    st = tmp_path / "m.safetensors"  # a weights file needs no dataset for --split-dir (it was asked for --data)
    assert main(["export", str(digits_run), "--out", str(st)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(st), "--split-dir", str(tmp_path / "mine"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20
    (tmp_path / "unreadable" / "0").mkdir(parents=True)  # a folder of files none of which is an image
    (tmp_path / "unreadable" / "0" / "x.jpg").write_text("hello")
    (tmp_path / "unreadable" / "0" / "empty.png").write_bytes(b"")
    assert main(["evaluate", str(st), "--split-dir", str(tmp_path / "unreadable"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines()[-1].endswith("could be read; nothing evaluated"), err


def _write_png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that claims w x h pixels: what a decompression bomb looks like to a decoder."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    files = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        files[name] = d / name
        img.save(d / name, **kw)

    save("grey.png", Image.fromarray(rgb[..., 0], "L"))
    save("cmyk.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"))
    save("palette.png", Image.fromarray(rgb, "RGB").convert("P"))
    save("sixteen.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("one.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save("exif.jpg", Image.fromarray(rgb, "RGB"), exif=exif)
    return files


def test_odd_image_modes_just_work(digits_run: Path, odd_images: dict, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["predict", str(digits_run), *map(str, odd_images.values()), "--json"]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert [r["file"] for r in rows] == list(map(str, odd_images.values()))
    assert all("top" in r for r in rows)


def test_exif_orientation_is_applied(odd_images: dict) -> None:
    from alexnet.data.images import load_rgb

    assert load_rgb(odd_images["exif.jpg"]).size == (40, 50)  # stored 50x40, rotated by EXIF
    assert load_rgb(odd_images["sixteen.png"]).mode == "RGB"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "no such file or directory"),
        (lambda d: (d / "emptydir").mkdir() or d / "emptydir", "directory has no image files"),
        (lambda d: _write(d / "notes.jpg", b"not an image"), "not an image file"),
        (lambda d: _write(d / "empty.png", b""), "empty file"),
        (lambda d: _truncated_jpeg(d / "cut.jpg"), "truncated"),
        (lambda d: _write_png_header_only(d / "bomb.png", 30000, 30000) or d / "bomb.png", "over the limit"),
    ],
    ids=["missing", "empty-dir", "non-image", "empty-file", "truncated-jpeg", "decompression-bomb"],
)
def test_bad_input_is_reported_and_the_rest_predicted(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                                      make, message: str, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    bad = make(tmp_path)
    good = str(val_digit_files[0][0])
    capsys.readouterr()
    assert main(["predict", str(digits_run), str(bad), good, "--json"]) == 1
    out, err = capsys.readouterr()
    rows = _jsonl(out)
    assert rows[0]["file"] == str(bad) and message in rows[0]["error"]
    assert rows[1]["file"] == good and "top" in rows[1]
    assert "Traceback" not in err
    # table mode: an error line on stderr, the good file still predicted
    assert main(["predict", str(digits_run), str(bad), good]) == 1
    out, err = capsys.readouterr()
    assert message in err and good[-30:] in out
    assert len(good) > 40 and f"...{good[-37:]}    1  " in out  # a long path is visibly cut, keeping its end


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:800])
    return path


def test_features_npz(digits_run: Path, val_digit_files: list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.npz"
    paths = [str(p) for p, _ in val_digit_files[:5]]
    assert main(["features", str(digits_run), *paths, "--out", str(out)]) == 0
    z = np.load(out)  # plain numpy, no pickle
    assert z["features"].shape == (5, 4096) and z["features"].dtype == np.float32
    assert list(z["files"]) == paths and str(z["layer"]) == "fc7"
    assert (z["features"] >= 0).all()  # post-ReLU activations
    before = out.read_bytes()
    assert main(["features", str(digits_run), *paths, "--out", str(out), "--layer", "pool5"]) == 2  # never overwritten
    assert out.read_bytes() == before
    assert main(["features", str(digits_run), *paths, "--out", str(out), "--layer", "pool5", "--force"]) == 0
    assert np.load(out)["features"].shape == (5, 9216)
    assert main(["features", str(digits_run), *paths, "--out", str(out), "--layer", "conv5", "--force"]) == 0
    assert main(["features", str(digits_run), *paths, "--out", str(out), "--layer", "nope", "--force"]) == 2
    # the classifier as a whole (the network calls its layers one by one), and an empty name (the whole network)
    conv5 = out.read_bytes()
    for layer, said in (("classifier", "'classifier' is never called as a whole; name a layer in it (classifier."),
                        ("", "unknown layer ''")):  # fmt: skip
        capsys.readouterr()
        assert main(["features", str(digits_run), *paths, "--out", str(out), "--layer", layer, "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert out.read_bytes() == conv5  # the last good output stays


def test_safetensors_round_trip(
    digits_run: Path, val_digit_files: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    st = tmp_path / "model.safetensors"
    assert main(["export", str(digits_run), "--format", "safetensors", "--out", str(st)]) == 0
    assert main(["export", str(digits_run), "--format", "safetensors", "--out", str(st)]) == 2  # no silent overwrite
    paths = [str(p) for p, _ in val_digit_files[:8]]
    capsys.readouterr()
    assert main(["predict", str(digits_run), *paths, "--json"]) == 0
    from_ckpt = _jsonl(capsys.readouterr().out)
    assert main(["predict", str(st), *paths, "--json"]) == 0
    from_st = _jsonl(capsys.readouterr().out)
    for a, b in zip(from_ckpt, from_st, strict=True):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-6)
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert meta["variant"] == "alexnet" and json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert json.loads(meta["preprocess"])["crop"] == 72
    # a file whose metadata was edited by hand: named as the file at fault, before any image is read
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(st))
    pre = json.loads(meta["preprocess"])
    for key, bad in (("model_options", {"lrn_size": "x"}), ("model_options", {"lrn_size": 0}),
                     ("model_options", {"shape": 3}), ("preprocess", pre | {"resize": -5}),
                     ("preprocess", pre | {"std": [0, 0, 0]}), ("class_names", "abc")):  # fmt: skip
        edited = tmp_path / "edited.safetensors"
        save_file(tensors, str(edited), metadata=meta | {key: json.dumps(bad)})
        for cmd in (["predict", str(edited), paths[0]], ["export", str(edited), "--out", str(tmp_path / "e.onnx")]):
            assert main(cmd) == 2, (key, bad, cmd)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{edited}: incomplete alexnet metadata" in err, err
    # a file this user may not read: safetensors raises FileNotFoundError for it, as for a missing one (a test
    # running as root reads any file, so the refusal is played here)
    import safetensors

    def refused(path, **kw):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(safetensors, "safe_open", refused)
        m.setattr(os, "access", lambda path, mode: False)
        assert main(["predict", str(st), paths[0]]) == 2
    assert f"{st}: Permission denied" in capsys.readouterr().err


def test_onnx_parity(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    from alexnet.io.weights import load_weights

    model = load_weights(str(digits_run)).model
    x = torch.randn(5, 3, 72, 72)  # a batch size the export never saw: the batch axis is dynamic
    for flags, lrn_nodes in (([], 2 * 2), (["--no-lrn-op"], 0)):  # one ONNX LRN per tower and layer, or none
        out = tmp_path / f"m{len(flags)}.onnx"
        assert main(["export", str(digits_run), "--format", "onnx", "--out", str(out), *flags]) == 0
        line = capsys.readouterr().out
        assert float(line.rsplit(" ", 1)[1]) < 1e-4
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert ops.count("LRN") == lrn_nodes, ops
        if not lrn_nodes:  # what runtimes without LRN (burn, candle, onnx2keras) lack
            assert not {"LRN", "ScatterND"} & set(ops), sorted(set(ops))
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() < 1e-4
    assert main(["export", str(digits_run), "--format", "pt2", "--out", str(tmp_path / "x.pt2"), "--no-lrn-op"]) == 2
    # our own export given to import-weights (which reads Caffe's conventions): told where its weights are, where
    # it once said "layer order conv lrn lrn pool ... is not AlexNet's" (one LRN per tower)
    capsys.readouterr()
    assert main(["import-weights", str(tmp_path / "m0.onnx"), "--out", str(tmp_path / "back.safetensors")]) == 2
    assert "was exported by this package (alexnet): its weights are in the run" in capsys.readouterr().err
    # the paper's network at its native 227 px: nothing but the most basic operators
    from alexnet.commands.export import export_onnx
    from alexnet.data.preprocess import Preprocess
    from alexnet.io.weights import Loaded

    native = Loaded(create_model("alexnet", 10).eval(), "alexnet", [str(i) for i in range(10)],
                    Preprocess.imagenet(256, 227), None, "random")  # fmt: skip
    assert export_onnx(native, tmp_path / "n.onnx", lrn_op=False) < 1e-4
    basic = {"Conv", "Relu", "MaxPool", "Reshape", "Gemm", "Pad", "Slice", "Add", "Mul", "Sqrt", "Reciprocal"}
    assert {n.op_type for n in onnx.load(str(tmp_path / "n.onnx")).graph.node} <= basic


def test_pt2_export_loads_without_this_package(digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """torch.export's ExportedProgram: dynamic batch, parity, and loadable by plain PyTorch."""
    import subprocess
    import sys

    from .conftest import fill_the_disk

    out = tmp_path / "m.pt2"
    with monkeypatch.context() as m:  # a disk that fills under the export: named, nothing left (torch aborted)
        fill_the_disk(m, after=1_000_000)
        assert main(["export", str(digits_run), "--format", "pt2", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("No space left on device") and not list(tmp_path.iterdir())
    assert main(["export", str(digits_run), "--format", "pt2", "--out", str(out)]) == 0
    code = ("import sys, json, torch; m = torch.export.load(sys.argv[1]); y = m.module()(torch.ones(5, 3, 72, 72)); "
            "extra = {'alexnet.json': ''}; torch.export.load(sys.argv[1], extra_files=extra); "
            "assert not [k for k in sys.modules if k.split('.')[0] == 'alexnet']; "
            "print(json.dumps({'y': y.tolist(), 'meta': json.loads(extra['alexnet.json'])}))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    from alexnet.io.weights import load_weights

    w = load_weights(str(digits_run))
    with torch.no_grad():
        want = w.model(torch.ones(5, 3, 72, 72))
    assert torch.allclose(torch.tensor(got["y"]), want, atol=1e-4)
    assert got["meta"]["class_names"] == w.class_names and got["meta"]["preprocess"]["crop"] == 72


def test_create_model_takes_a_run_its_checkpoint_and_its_export(digits_run: Path, tmp_path: Path) -> None:
    """create_model(name, weights=...) loads what load_weights does: a run directory, a checkpoint, an exported
    .safetensors file; the classes from the weights unless another count asks for a fresh last layer; weights
    of another network and options the weights fix are refused with the ValueError torch's own checks raise."""
    from alexnet.errors import UserError
    from alexnet.io.weights import load_weights

    st = tmp_path / "digits.safetensors"
    assert main(["export", str(digits_run), "--format", "safetensors", "--out", str(st)]) == 0
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        want = load_weights(str(digits_run)).model(x)
        for spec in (digits_run, digits_run / "checkpoints" / "best.pt", st):
            model = create_model("alexnet", weights=str(spec)).eval()
            assert model.num_classes == 10 and torch.equal(model(x), want), spec
    five = create_model("alexnet", 5, weights=str(st))
    assert five.num_classes == 5 and torch.equal(five.features.conv1.weight, model.features.conv1.weight)
    with pytest.raises(ValueError, match="holds alexnet weights, not alexnet_bn"):
        create_model("alexnet_bn", weights=str(st))
    with pytest.raises(ValueError, match="lrn_k: set by the weights"):
        create_model("alexnet", weights=str(st), lrn_k=1.0)
    with pytest.raises(UserError, match="no such run directory or checkpoint"):
        create_model("alexnet", weights=str(tmp_path / "missing"))


def test_torch_hub_local(digits_run: Path) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    fresh = torch.hub.load(repo, "alexnet", source="local", num_classes=7)
    assert fresh(torch.randn(1, 3, 227, 227)).shape == (1, 7)
    trained = torch.hub.load(repo, "alexnet", source="local", weights=str(digits_run))
    from alexnet.io.weights import load_weights

    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        assert torch.equal(trained(x), load_weights(str(digits_run)).model(x))
    assert trained.class_names == [str(i) for i in range(10)] and not trained.training
    with pytest.raises(ValueError, match="holds alexnet weights"):
        torch.hub.load(repo, "alexnet_owt", source="local", weights=str(digits_run))
    # what the weights fix is never silently replaced (num_classes=5 once returned the 10-class model), and
    # torchvision's weights for the paper's network are refused before a download, not after
    assert torch.hub.load(repo, "alexnet", source="local", weights=str(digits_run), num_classes=10).num_classes == 10
    for kwargs, words in (({"weights": str(digits_run), "num_classes": 5}, "num_classes=5, but"),
                          ({"weights": str(digits_run), "dropout": 0.1}, "dropout: set by the weights"),
                          ({"weights": "torchvision"}, "load 'alexnet_owt', not 'alexnet'")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            torch.hub.load(repo, "alexnet", source="local", **kwargs)


def test_torchscript_export(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    assert main(["export", str(digits_run), "--format", "torchscript", "--out", str(out)]) == 0
    with warnings.catch_warnings():  # PyTorch deprecates torch.jit.load; the export is kept while it ships
        warnings.simplefilter("ignore", FutureWarning)
        assert torch.jit.load(str(out))(torch.randn(2, 3, 72, 72)).shape == (2, 10)


@pytest.fixture
def torchvision_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """Put a locally made state dict where torchvision's weights API looks, instead of downloading."""
    tv = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ref = tv.models.alexnet()
    ckdir = tmp_path / "torch" / "hub" / "checkpoints"
    ckdir.mkdir(parents=True)
    torch.save(ref.state_dict(), ckdir / "alexnet-owt-7be5be79.pth")
    return ref.eval()


def test_torchvision_weights_through_the_local_cache(torchvision_cache: torch.nn.Module, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    model = create_model("alexnet_owt", weights="torchvision").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), torchvision_cache(x))
    finetune = create_model("alexnet_owt", num_classes=7, weights="torchvision")
    assert finetune.classifier[6].out_features == 7
    torch.testing.assert_close(finetune.features[0].weight, torchvision_cache.features[0].weight)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(img)
    capsys.readouterr()
    assert main(["predict", "torchvision", str(img), "--json", "--topk", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["top"]) == 2 and "(n" in row["top"][0]["class"]  # ImageNet names with WordNet ids


def test_finetune_from_torchvision_weights(
    torchvision_cache: torch.nn.Module, tiny_folder: Path, tmp_path: Path
) -> None:
    from .conftest import FAST

    run = tmp_path / "ft"
    args = ["train", "--data", str(tiny_folder), "--out", str(run), *FAST, "--model", "alexnet_owt", "--weights",
            "torchvision", "--set", "model.freeze_features=true"]  # fmt: skip
    assert main(args) == 0
    from alexnet.io import checkpoint as ckpt_io

    # the network is fed what torchvision trained it on: its published normalisation, not this folder's
    tv_pre = pytest.importorskip("torchvision").models.AlexNet_Weights.IMAGENET1K_V1.transforms()
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["normalize"] == "channel"
    torch.testing.assert_close(torch.tensor(data["mean"]), torch.tensor(tv_pre.mean), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(data["std"]), torch.tensor(tv_pre.std), rtol=0, atol=1e-6)

    w = ckpt_io.load(run / "checkpoints" / "last.pt")["model"]
    torch.testing.assert_close(w["features.0.weight"], torchvision_cache.features[0].weight)  # frozen
    assert w["classifier.6.weight"].shape == (3, 4096)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_malicious_pickle_is_refused(tmp_path: Path, val_digit_files: list, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "alexnet-checkpoint/1", "model": _Evil(marker)}, f)
    torch.save({"format": "alexnet-checkpoint/1", "model": _Evil(marker)}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        for cmd in (["predict", str(path), str(val_digit_files[0][0])], ["evaluate", str(path)]):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert "refused to load" in err or "corrupt" in err
            assert "Traceback" not in err
    assert not marker.exists()


def test_a_folder_that_refuses_writes_is_named_in_one_line(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--out naming a folder, or a file in a missing folder, and a read-only folder (as a non-root user meets it):
    one line, before any work; the error names the file asked for, not the hidden temporary file it is written
    through."""
    from alexnet.io import atomic

    def read_only(file, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise PermissionError(13, "Permission denied", str(file))

    image, folder = str(val_digit_files[0][0]), tmp_path / "d.npz"
    folder.mkdir()
    for out, said in ((folder, f"{folder} is a directory; --out names the file to write"),
                      (tmp_path / "no" / "f.npz", f"output directory does not exist: {tmp_path / 'no'}")):  # fmt: skip
        assert main(["features", str(digits_run), image, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"alexnet features: error: {said}"
    folder.rmdir()  # and it was left empty
    monkeypatch.setattr(atomic, "open", read_only, raising=False)
    out = tmp_path / "f.npz"
    assert main(["features", str(digits_run), image, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"alexnet features: error: {out}: Permission denied"
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_not_a_checkpoint_gets_one_line(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Empty, text and cut-off files given as WEIGHTS: once an IndexError/KeyError from torch's legacy unpickler."""
    whole = (digits_run / "checkpoints" / "last.pt").read_bytes()
    bad = {"empty.pt": b"", "notes.pt": b"hello\n", "cut.pt": whole[: len(whole) // 2]}
    said = {"empty.pt": "empty file", "notes.pt": "is a text file, not weights or a checkpoint",
            "cut.pt": "corrupt or truncated"}  # fmt: skip
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        path = str(tmp_path / name)
        for cmd in (["predict", path, str(val_digit_files[0][0])], ["export", path, "--format", "safetensors",
                    "--out", str(tmp_path / "w.safetensors")], ["train", "--resume", path]):  # fmt: skip
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and name in err and said[name] in err, err
    assert not (tmp_path / "w.safetensors").exists()
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"alexnet train: error: no such run directory or checkpoint: {tmp_path / 'missing'}"
    )


def test_files_mistaken_for_weights_are_named(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Exports, model-zoo files, an image and a bare state_dict given as WEIGHTS: each is named for what it is,
    with what to pass instead (before: "corrupt or truncated checkpoint", which sent users to re-download)."""
    onnx = pytest.importorskip("onnx")
    image = str(val_digit_files[0][0])
    tiny = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript; its archives are still handed around
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(tiny), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(tiny, (torch.ones(1, 2),)), str(tmp_path / "m.pt2"))
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    value = lambda name: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])  # noqa: E731
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value("x")], [value("y")])),
              str(tmp_path / "bvlcalexnet-12.onnx"))  # fmt: skip
    (tmp_path / "zoo.pt").write_bytes((tmp_path / "bvlcalexnet-12.onnx").read_bytes())  # renamed on the way
    torch.save({"features.0.weight": torch.ones(1), "classifier.6.weight": torch.ones(1)}, tmp_path / "owt.pth")
    said = {"m.ts": "is a TorchScript archive", "m.pt2": "is a torch.export program (.pt2)",
            "bvlcalexnet-12.onnx": "is an ONNX model: convert it once with `alexnet import-weights",
            "zoo.pt": "zoo.pt is an ONNX model, by its content: convert it once with `alexnet import-weights",
            image: "is an image, not weights", "owt.pth": "bare state_dict in torchvision's layout",
            str(digits_run / "config.yaml"): f"is a file of the run {digits_run}, not its weights: pass the run "
                                             "directory itself", "notes.txt": "is a text file, not weights"}  # fmt: skip
    (tmp_path / "notes.txt").write_text("batch size 64\n")  # these two once said "corrupt or truncated checkpoint"
    for name, words in said.items():
        path = name if Path(name).is_absolute() else str(tmp_path / name)
        for cmd in (["predict", path, image], ["evaluate", path, "--data", str(tmp_path)], ["train", "--resume", path]):
            assert main(cmd) == 2, cmd
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err, (cmd, err)
    st = tmp_path / "model.bin"  # a safetensors file by any name loads; resuming from one says what it lacks
    assert main(["export", str(digits_run), "--out", str(tmp_path / "m.safetensors")]) == 0  # --format from --out
    (tmp_path / "m.safetensors").rename(st)
    capsys.readouterr()
    assert main(["predict", str(st), image, "--json"]) == 0 and len(_jsonl(capsys.readouterr().out)) == 1
    assert main(["train", "--resume", str(st)]) == 2
    assert "is a safetensors weights file, not a training checkpoint" in capsys.readouterr().err
    other = tmp_path / "other-run"  # a checkpoint kept beside a run's files is still a checkpoint
    (other / "checkpoints").mkdir(parents=True)
    (other / "metrics.jsonl").write_text("")
    os.link(digits_run / "checkpoints" / "last.pt", other / "kept.pt")
    assert main(["predict", str(other / "kept.pt"), image, "--json"]) == 0


def test_export_takes_its_format_from_the_file_name(digits_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """--out m.onnx means ONNX; a name that contradicts --format (an ONNX graph in "m.safetensors", which nothing
    could read back) or names none is refused before any work."""
    for out, fmt, words in (("m.safetensors", "onnx", "names a safetensors file but --format is onnx"),
                            ("m.bin", None, "--format is needed: --out")):  # fmt: skip
        assert main(["export", str(digits_run), "--out", str(tmp_path / out), *(["--format", fmt] if fmt else [])]) == 2
        assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert main(["export", str(digits_run), "--out", str(tmp_path / "m.ts")]) == 0
    assert "TorchScript" in capsys.readouterr().out and zipfile.is_zipfile(tmp_path / "m.ts")


def test_a_reader_that_leaves_ends_the_command_quietly(digits_run: Path, val_digit_files: list,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`alexnet predict RUN photos/ | head -1`: exit 141 (as a shell's own tools) and nothing on stderr, where it
    said "error: Broken pipe"."""
    r, w = os.pipe()
    os.close(r)  # the reader has left
    pipe = open(w, "w", buffering=1)  # noqa: SIM115 - stands for standard output
    monkeypatch.setattr("sys.stdout", pipe)
    assert main(["predict", str(digits_run), *[str(p) for p, _ in val_digit_files[:4]]]) == 141
    assert capsys.readouterr().err == ""
    import select  # Windows has no poll: there the closed pipe is one line and exit 2, as any failed write

    pipe.close()  # (pointed at /dev/null by the command above)
    r, w = os.pipe()
    os.close(r)
    pipe = open(w, "w", buffering=1)  # noqa: SIM115
    monkeypatch.setattr("sys.stdout", pipe)
    monkeypatch.delattr(select, "poll")
    assert main(["predict", str(digits_run), str(val_digit_files[0][0])]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    os.dup2(os.open(os.devnull, os.O_WRONLY), w)  # nothing left to fail when it is closed
    pipe.close()


def test_explain_and_the_look_inside_figures(digits_run: Path, val_digit_files: list, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The demo network: occluding a digit's strokes lowers its probability more than occluding blank paper."""
    from alexnet.inference.occlusion import occlusion_map
    from alexnet.io.weights import load_weights

    path, label = val_digit_files[0]
    out = tmp_path / "heat.png"
    assert main(["explain", str(digits_run), str(path), "--out", str(out), "--target", str(label)]) == 0
    assert "lowest p" in capsys.readouterr().out and Image.open(out).size[0] > 200
    assert main(["explain", str(digits_run), str(path), "--out", str(out)]) == 2  # never overwritten
    # a disk that fills while the figure is written: the old figure stays whole, nothing half-written is left
    import errno

    from matplotlib.figure import Figure

    def full(self, fname, **kw):
        fname.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    before, files = out.read_bytes(), sorted(tmp_path.iterdir())
    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", full)
        assert main(["explain", str(digits_run), str(path), "--out", str(out), "--force"]) == 2
        assert main(["explain", str(digits_run), str(path), "--out", str(tmp_path / "new.png")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == files
    assert main(["explain", str(digits_run), str(path), "--out", str(tmp_path / "x.png"), "--target", "99"]) == 2
    capsys.readouterr()
    assert main(["explain", str(digits_run), str(path), "--out", str(tmp_path / "x.png"), "--patch", "500"]) == 2
    assert "--patch: the occluding square must be 1 to 72 px (the crop), got 500" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    figs = tmp_path / "figs"
    assert main(["figures", str(digits_run), "--out", str(figs), "--which", "occlusion,units", "--max-val", "40"]) == 0
    assert (figs / "occlusion.png").is_file() and (figs / "units.png").is_file()
    w = load_weights(str(digits_run))
    norm, crop = w.preprocess.normalizer(), w.preprocess.crop
    drops = []
    for path, label in val_digit_files[:6]:
        img = np.asarray(Image.open(path).convert("L").resize((crop, crop), Image.NEAREST), dtype=np.float32)
        x = norm(torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((crop, crop), Image.NEAREST)))
                 .permute(2, 0, 1)[None])[0]  # fmt: skip
        m = occlusion_map(w.model, x, label, patch=crop // 4, stride=crop // 12)
        ink = torch.from_numpy(img > img.mean())  # the strokes: brighter than the image's mean
        drops.append(float(m.heat[~ink].mean() - m.heat[ink].mean()))
    assert sum(d > 0 for d in drops) >= 5, drops  # strokes matter more than the background, for nearly every digit


def test_files_are_decoded_ahead_in_order_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict's decoding threads keep the given order (failures in place), and stay at most ``ahead`` files in
    front of the reader, so a folder of any size never sits decoded in memory."""
    from alexnet.data.preprocess import Preprocess
    from alexnet.inference import imagefiles

    for i in range(40):
        Image.new("RGB", (20 + i, 30), (i, 0, 0)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "17.png").write_bytes(b"not a png")
    started: list[str] = []
    real = imagefiles.load_rgb

    def load(path):  # records how far decoding has gone
        started.append(path)
        return real(path)

    monkeypatch.setattr(imagefiles, "load_rgb", load)
    items = imagefiles.collect_files([str(tmp_path)])
    seen = []
    for item in imagefiles.decoded(items, Preprocess.imagenet(resize=32, crop=28), threads=3, ahead=5):
        assert len(started) <= len(seen) + 1 + 5  # this item and at most 5 beyond it
        seen.append(item)
    assert [Path(i.file).name for i in seen] == [f"{i:02d}.png" for i in range(40)]
    assert [i.error is not None for i in seen] == [i == 17 for i in range(40)]
    assert seen[3].image.shape == (3, 32, 32) and int(seen[3].image[0].float().mean()) == 3
    # a reader that stops early (Ctrl-C, `| head`) does not wait for the files queued ahead to be decoded
    started.clear()
    monkeypatch.setattr(imagefiles, "load_rgb", lambda path: time.sleep(0.2) or load(path))
    ahead = imagefiles.decoded(items, Preprocess.imagenet(resize=32, crop=28), threads=1, ahead=20)
    next(ahead)
    ahead.close()
    assert len(started) <= 3, started  # the first, and the one being decoded when the reader left
