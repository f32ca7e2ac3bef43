"""`alexnet export`: ONNX (checked with onnxruntime), TorchScript, and safetensors with metadata.

The safetensors file is self-describing (variant, class names, input size, normalisation), loads
without executing code, and is what `predict` prefers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .weights import Loaded, _model_from_state

FORMAT = "alexnet-safetensors/1"


def save_safetensors(loaded: Loaded, out: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    pre = dict(loaded.preprocess)
    mean_image = pre.pop("mean_image", None)
    if mean_image is not None:
        tensors["__preprocess__.mean_image"] = torch.as_tensor(mean_image).float().contiguous()
    model_cfg = (loaded.config or {}).get("model", {})
    meta = {
        "format": FORMAT,
        "variant": loaded.variant,
        "class_names": json.dumps(loaded.class_names),
        "input_size": str(pre["crop"]),
        "preprocess": json.dumps({k: pre[k] for k in ("resize", "crop", "mean", "std")}),
        "model_options": json.dumps({k: v for k, v in model_cfg.items() if k.startswith("lrn_")}),
        "source": loaded.source,
    }
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)


def load_safetensors(path: Path) -> Loaded:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: safetensors file without alexnet metadata (format {meta.get('format')!r})")
    pre: dict[str, Any] = json.loads(meta["preprocess"])
    pre["mean_image"] = tensors.pop("__preprocess__.mean_image", None)
    names = json.loads(meta["class_names"])
    options = json.loads(meta.get("model_options", "{}"))
    config = {"model": options} if options else None
    model = _model_from_state(meta["variant"], len(names), tensors, config)
    return Loaded(model.eval(), meta["variant"], names, pre, None, str(path))


def export_onnx(loaded: Loaded, out: Path, opset: int = 18) -> float:
    """Export with a dynamic batch axis; returns the max |onnxruntime - PyTorch| on random inputs."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'alexnet[export]'") from None
    size = int(loaded.preprocess["crop"])
    model = loaded.model.cpu().eval()
    x = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = out.with_name(out.name + ".tmp")
    torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True, external_data=False)  # fmt: skip
    proto = onnx.load(str(tmp))
    for key, value in {"variant": loaded.variant, "class_names": json.dumps(loaded.class_names),
                       "preprocess": json.dumps({k: loaded.preprocess[k] for k in ("resize", "crop", "mean", "std")})}.items():  # fmt: skip
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    tmp.replace(out)
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
    size = int(loaded.preprocess["crop"])
    model = loaded.model.cpu().eval()
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():  # PyTorch marks TorchScript deprecated; kept for C++/legacy deployments
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)
        tmp = out.with_name(out.name + ".tmp")
        torch.jit.save(traced, str(tmp))
        tmp.replace(out)
        xi = torch.randn(3, 3, size, size)
        with torch.no_grad():
            return float((torch.jit.load(str(out))(xi) - model(xi)).abs().max())


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
