"""Inference images/s: the network at batch 1 and 64 (ours on the commands' `auto` compute path, and ONNX Runtime,
against torchvision fp32 eager), then `alexnet evaluate` and `alexnet predict` as a user runs them, on the weights
file (PyTorch) and on its ONNX export (onnxruntime), against a pytorch/examples-style loop over the same images
in the same invocation.

python benchmarks/inference.py [--iters 10] [--data ../shared/data] [--max-val 500]

The commands' part needs ``--data`` (Imagenette's val/ and the full-size ImageNet samples of ../shared/data);
without it only the network is timed. The weights are random (alexnet_owt, torchvision's architecture): speed
does not depend on them. A command is timed from its call in this process to its return: weights loading, the
folder's index, decoding, the network and the printing, i.e. everything but the interpreter's start and imports,
and the baseline likewise from building its dataset to its last batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table, timeit  # noqa: E402

from alexnet import create_model  # noqa: E402
from alexnet.cli import main as alexnet  # noqa: E402
from alexnet.data.folder import default_workers  # noqa: E402
from alexnet.data.preprocess import Preprocess  # noqa: E402
from alexnet.inference import compute_path  # noqa: E402
from alexnet.io.weights import Loaded, save_safetensors  # noqa: E402


def onnx_session(ours: torch.nn.Module):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from alexnet.commands.export import export_onnx

    path = Path(tempfile.mkdtemp()) / "m.onnx"
    export_onnx(Loaded(ours, "alexnet_owt", [str(i) for i in range(1000)], Preprocess.imagenet(), None, "bench"), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def network_rows(iters: int) -> list[list[str]]:
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    ours = create_model("alexnet_owt").eval()
    ours.load_state_dict(tv.state_dict())
    session = onnx_session(ours)
    path = compute_path(ours, torch.device("cpu"))  # what evaluate, predict and features run here
    label = f"ours, the commands' auto path ({path.amp if path.amp != 'none' else 'fp32'}"
    label += " + channels_last)" if path.channels_last else ")"
    rows = []
    for batch in (1, 64):
        x = torch.randn(batch, 3, 224, 224)
        xcl = x.contiguous(memory_format=torch.channels_last) if path.channels_last else x
        n = iters if batch > 1 else iters * 5
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if path.amp == "bf16" else contextlib.nullcontext()

        def run_tv():
            with torch.inference_mode():
                tv(x)

        def run_ours():
            with torch.inference_mode(), amp:
                ours(xcl)

        base = batch / timeit(run_tv, 2, n)
        rows.append([f"network, batch {batch}: torchvision fp32 eager (baseline)", f"{base:.1f}", "1.00x"])
        v = batch / timeit(run_ours, 2, n)
        rows.append([f"network, batch {batch}: {label}", f"{v:.1f}", f"{v / base:.2f}x"])
        if session is not None:
            xn = x.numpy()
            v = batch / timeit(lambda: session.run(None, {"images": xn}), 2, n)
            rows.append([f"network, batch {batch}: ours ONNX Runtime fp32", f"{v:.1f}", f"{v / base:.2f}x"])
    return rows


def subset(val: Path, per_class: int, out: Path) -> int:
    """The first ``per_class`` images of each class folder of ``val``, linked into ``out``."""
    n = 0
    for cls in sorted(p for p in val.iterdir() if p.is_dir()):
        (out / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            (out / cls.name / f.name).symlink_to(f.resolve())
            n += 1
    return n


def examples_loop(files: list[tuple[str, int]], num_classes: int, batch: int, workers: int) -> None:
    """pytorch/examples imagenet/main.py's validate(): PIL + Resize(256) + CenterCrop(224) + ToTensor + Normalize
    in a DataLoader, torchvision's AlexNet in fp32 under no_grad."""
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    pre = Preprocess.imagenet()
    tf = T.Compose([T.Resize(pre.resize), T.CenterCrop(pre.crop), T.ToTensor(), T.Normalize(pre.mean, pre.std)])

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i][0]) as im:
                return tf(im.convert("RGB")), files[i][1]

    model = torchvision.models.alexnet(num_classes=num_classes).eval()
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers)
    with torch.no_grad():
        for x, _ in loader:
            model(x).topk(5, 1)


def timed(fn) -> float:
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    return time.perf_counter() - t


def command_rows(data: Path, per_class: int, batch: int) -> list[list[str]]:
    tmp = Path(tempfile.mkdtemp())
    val, samples = data / "imagenette2-224" / "val", data / "imagenet-samples"
    n_val = subset(val, per_class, tmp / "val")
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    from alexnet.commands.export import export_onnx

    for n, names in ((10, classes), (1000, [str(i) for i in range(1000)])):
        model = create_model("alexnet_owt", n)
        loaded = Loaded(model, "alexnet_owt", names, Preprocess.imagenet(), None, "bench")
        save_safetensors(loaded, tmp / f"w{n}.st")
        with contextlib.redirect_stdout(io.StringIO()):
            export_onnx(loaded, tmp / f"w{n}.onnx")
    val_files = [(str(f), i) for i, c in enumerate(classes) for f in sorted((tmp / "val" / c).iterdir())]
    jpegs = sorted(str(f) for f in samples.iterdir())
    workers = default_workers(-1)
    torch.manual_seed(0)
    b = "--batch-size", str(batch)
    rows = []
    for what, n_img, base_fn, ours_fn in (
        (f"alexnet evaluate (Imagenette val, {n_val} images of 224 px)", n_val,
         lambda: examples_loop(val_files, 10, batch, workers),
         lambda w: alexnet(["evaluate", str(tmp / f"w10.{w}"), "--split-dir", str(tmp / "val"), *b, "--json"])),
        (f"alexnet predict (ImageNet samples, {len(jpegs)} full-size JPEGs)", len(jpegs),
         lambda: examples_loop([(f, 0) for f in jpegs], 1000, batch, workers),
         lambda w: alexnet(["predict", str(tmp / f"w1000.{w}"), str(samples), *b, "--json"])),
    ):  # fmt: skip
        for w in ("st", "onnx"):  # a first call pays the page cache and one-off lazy imports, for both
            timed(lambda: ours_fn(w))
        base = n_img / timed(base_fn)
        rows.append([f"{what}: pytorch/examples loop, {workers} workers (baseline)", f"{base:.1f}", "1.00x"])
        for w, how in (("st", "the command, as shipped (PyTorch, weights file)"),
                       ("onnx", "the command on the ONNX export (onnxruntime fp32)")):  # fmt: skip
            ours = n_img / timed(lambda: ours_fn(w))
            rows.append([f"{what}: {how}", f"{ours:.1f}", f"{ours / base:.2f}x"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--data", type=Path, help="../shared/data: also time evaluate and predict")
    ap.add_argument("--max-val", type=int, default=500, help="validation images for evaluate (a subset per class)")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    rows = [["measurement", "img/s", "vs baseline"], *network_rows(args.iters)]
    if args.data is not None:
        rows += command_rows(args.data, max(1, args.max_val // 10), args.batch)
    print(f"CPU threads {torch.get_num_threads()}; torch {torch.__version__}")
    print(table(rows))


if __name__ == "__main__":
    main()
