"""`alexnet export`: ONNX (checked with onnxruntime), torch.export programs (.pt2), TorchScript (deprecated by
PyTorch, kept while it ships), and safetensors with metadata.

The safetensors file is self-describing (variant, class names, input size, normalisation), loads
without executing code, and is what `predict` prefers.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_bytes, check_output
from .errors import UserError
from .weights import Loaded, load_weights, save_safetensors


def _onnx_lrn(x: Any, size: int, alpha: float, beta: float, k: float, groups: int) -> Any:
    """``alexnet::lrn`` as ONNX: one ``LRN`` per tower (Split, LRN, Concat), same alpha/n convention."""
    from onnxscript import opset18 as op

    if groups == 1:
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)
    parts = op.Split(x, num_outputs=groups, axis=1)
    return op.Concat(*[op.LRN(p, size=size, alpha=alpha, beta=beta, bias=k) for p in parts], axis=1)


def _with_lrn_op(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose GroupedLRN layers run as the ``alexnet::lrn`` operator, for the ONNX LRN mapping."""
    from .models.lrn import GroupedLRN, LRNOp

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GroupedLRN):
                setattr(parent, name, LRNOp(child))
    return model


def export_onnx(loaded: Loaded, out: Path, opset: int = 18, lrn_op: bool = True) -> float:
    """Export with a dynamic batch axis; returns the max |onnxruntime - PyTorch| on random inputs. ``lrn_op``:
    LRN as ONNX's ``LRN`` operator; else as primitive operators (Pow, Mul, Add, ...) for runtimes without it."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; say so before exporting)
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'alexnet[export]'") from None
    size = loaded.preprocess.crop
    model = loaded.model.cpu().eval()
    x = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    table = {torch.ops.alexnet.lrn.default: _onnx_lrn} if lrn_op else None
    program = torch.onnx.export(_with_lrn_op(model) if lrn_op else model, (x,), None, input_names=["images"],
                                output_names=["logits"], dynamic_shapes={"x": {0: batch}}, opset_version=opset,
                                dynamo=True, custom_translation_table=table)  # fmt: skip
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


def export_pt2(loaded: Loaded, out: Path) -> float:
    """A ``torch.export`` ExportedProgram with a dynamic batch axis, loadable with ``torch.export.load`` alone
    (no alexnet import: LRN is plain tensor ops); the metadata as ``extra_files['alexnet.json']``. Returns the
    max |loaded program - PyTorch| on batches of 1 and 3."""
    size = loaded.preprocess.crop
    model = loaded.model.cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes={"x": {0: batch}})
    meta = {"variant": loaded.variant, "class_names": loaded.class_names, "preprocess": loaded.preprocess.to_meta()}
    atomic_write(out, lambda f: torch.export.save(program, f, extra_files={"alexnet.json": json.dumps(meta)}))
    reloaded = torch.export.load(str(out)).module()
    worst = 0.0
    for b in (1, 3):
        xi = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            worst = max(worst, float((reloaded(xi) - model(xi)).abs().max()))
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


# the file names each format is known by: --out's suffix implies --format, and may not contradict it
SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx", ".pt2": "pt2", ".ts": "torchscript",
            ".torchscript": "torchscript"}  # fmt: skip


def pick_format(fmt: str | None, out: Path) -> str:
    """``--format``, or the one ``--out``'s suffix names; a file named for another format is refused."""
    implied = SUFFIXES.get(out.suffix.lower())
    if fmt is None and implied is None:
        raise UserError(f"--format is needed: --out {out} does not name one (.safetensors, .onnx, .pt2 or .ts)")
    if fmt is not None and implied not in (None, fmt):
        raise UserError(f"--out {out} names a {implied} file but --format is {fmt}; rename one of them")
    return fmt or implied


def run_export(weights: str, fmt: str | None, out: Path, force: bool = False, lrn_op: bool = True) -> int:
    """`alexnet export`: never overwrites ``out`` without ``force``; prints what was written."""
    fmt = pick_format(fmt, out)
    check_output(out, force)
    if not lrn_op and fmt != "onnx":
        raise UserError("--no-lrn-op applies to --format onnx only")
    print(export(load_weights(weights, "cpu"), fmt, out, lrn_op))
    return 0


def export(loaded: Loaded, fmt: str, out: Path, lrn_op: bool = True) -> str:
    """Write ``loaded`` as ``fmt`` to ``out`` (whose directory exists: ``check_output``)."""
    if fmt == "safetensors":
        save_safetensors(loaded, out)
        return f"wrote {out} (weights + metadata: {loaded.variant}, {len(loaded.class_names)} classes)"
    if fmt == "onnx":
        diff = export_onnx(loaded, out, lrn_op=lrn_op)
        how = (
            ""
            if not _has_lrn(loaded.model)
            else ", LRN as the LRN operator"
            if lrn_op
            else ", LRN as primitive operators"
        )
        return f"wrote {out}{how}; onnxruntime vs PyTorch max abs difference {diff:.2e}"
    if fmt == "pt2":
        diff = export_pt2(loaded, out)
        return f"wrote {out}; torch.export program vs PyTorch max abs difference {diff:.2e}"
    diff = export_torchscript(loaded, out)
    return f"wrote {out}; TorchScript (deprecated by PyTorch: prefer pt2) vs PyTorch max abs difference {diff:.2e}"


def _has_lrn(model: torch.nn.Module) -> bool:
    from .models.lrn import GroupedLRN

    return any(isinstance(m, GroupedLRN) for m in model.modules())
