"""Inference images/s at batch 1 and 64: ours (bf16 + channels_last, and ONNX Runtime) vs torchvision fp32 eager.

python benchmarks/inference.py [--iters 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table, timeit  # noqa: E402

from alexnet import create_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    ours = create_model("alexnet_owt").eval()
    ours.load_state_dict(tv.state_dict())
    ours_cl = create_model("alexnet_owt").eval().to(memory_format=torch.channels_last)
    ours_cl.load_state_dict(tv.state_dict())
    session = None
    try:
        import onnxruntime as ort

        from alexnet.data.preprocess import Preprocess
        from alexnet.export import export_onnx
        from alexnet.weights import Loaded

        path = Path(tempfile.mkdtemp()) / "m.onnx"
        pre = Preprocess.imagenet()
        export_onnx(Loaded(ours, "alexnet_owt", [str(i) for i in range(1000)], pre, None, "bench"), path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except ImportError:
        pass
    rows = [["config", "batch", "img/s", "vs baseline"]]
    for batch in (1, 64):
        x = torch.randn(batch, 3, 224, 224)
        xcl = x.contiguous(memory_format=torch.channels_last)
        iters = args.iters if batch > 1 else args.iters * 5

        def run_tv():
            with torch.inference_mode():
                tv(x)

        def run_bf16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                ours_cl(xcl)

        base = batch / timeit(run_tv, 2, iters)
        rows.append(["torchvision fp32 eager (baseline)", str(batch), f"{base:.1f}", "1.00x"])
        v = batch / timeit(run_bf16, 2, iters)
        rows.append(["ours bf16 + channels_last", str(batch), f"{v:.1f}", f"{v / base:.2f}x"])
        if session is not None:
            xn = x.numpy()
            v = batch / timeit(lambda: session.run(None, {"images": xn}), 2, iters)
            rows.append(["ours ONNX Runtime fp32", str(batch), f"{v:.1f}", f"{v / base:.2f}x"])
    print(f"CPU threads {torch.get_num_threads()}")
    print(table(rows))


if __name__ == "__main__":
    main()
