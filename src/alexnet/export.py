"""`alexnet export`: ONNX (checked with onnxruntime), TorchScript, and safetensors with metadata.

The safetensors file is self-describing (variant, class names, input size, normalisation), loads
without executing code, and is what `predict` prefers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_bytes
from .errors import UserError
from .weights import SAFETENSORS_FORMAT, Loaded, load_weights


def save_safetensors(loaded: Loaded, out: Path) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    pre = loaded.preprocess
    if pre.mean_image is not None:
        tensors["__preprocess__.mean_image"] = pre.mean_image.float().contiguous()
    meta = {
        "format": SAFETENSORS_FORMAT,
        "variant": loaded.variant,
        "class_names": json.dumps(loaded.class_names),
        "input_size": str(pre.crop),
        "preprocess": json.dumps(pre.to_meta()),
        "model_options": json.dumps(loaded.options),
        "source": loaded.source,
    }
    atomic_write_bytes(out, save(tensors, metadata=meta))


def export_onnx(loaded: Loaded, out: Path, opset: int = 18) -> float:
    """Export with a dynamic batch axis; returns the max |onnxruntime - PyTorch| on random inputs."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; say so before exporting)
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'alexnet[export]'") from None
    size = loaded.preprocess.crop
    model = loaded.model.cpu().eval()
    x = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (x,), None, input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True)  # fmt: skip
    proto = program.model_proto
    for key, value in {"variant": loaded.variant, "class_names": json.dumps(loaded.class_names),
                       "preprocess": json.dumps(loaded.preprocess.to_meta())}.items():  # fmt: skip
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(out, proto.SerializeToString())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in (1, 3):
        xi = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        got = session.run(None, {"images": xi.numpy()})[0]
        with torch.no_grad():
            ref = model(xi).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_torchscript(loaded: Loaded, out: Path) -> float:
    size = loaded.preprocess.crop
    model = loaded.model.cpu().eval()
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():  # PyTorch marks TorchScript deprecated; kept for C++/legacy deployments
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)
        atomic_write(out, lambda f: torch.jit.save(traced, f))
        xi = torch.randn(3, 3, size, size)
        with torch.no_grad():
            return float((torch.jit.load(str(out))(xi) - model(xi)).abs().max())


def run_export(weights: str, fmt: str, out: Path, force: bool = False) -> int:
    """`alexnet export`: never overwrites ``out`` without ``force``; prints what was written."""
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    print(export(load_weights(weights, "cpu"), fmt, out))
    return 0


def export(loaded: Loaded, fmt: str, out: Path) -> str:
    if not out.parent.exists():
        raise UserError(f"output directory does not exist: {out.parent}")
    if fmt == "safetensors":
        save_safetensors(loaded, out)
        return f"wrote {out} (weights + metadata: {loaded.variant}, {len(loaded.class_names)} classes)"
    if fmt == "onnx":
        diff = export_onnx(loaded, out)
        return f"wrote {out}; onnxruntime vs PyTorch max abs difference {diff:.2e}"
    diff = export_torchscript(loaded, out)
    return f"wrote {out}; TorchScript vs PyTorch max abs difference {diff:.2e}"
