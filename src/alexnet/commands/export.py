"""`alexnet export`: ONNX (checked with onnxruntime), torch.export programs (.pt2), TorchScript (deprecated by
PyTorch, kept while it ships), safetensors with metadata, and a folder for the Hugging Face Hub.

The safetensors file is self-describing (variant, class names, input size, normalisation), loads
without executing code, and is what `predict` prefers. ONNX and .pt2 carry the export metadata
(export_meta.py: the preprocessing, mean image included); ``with_preprocess`` puts the scaling and
normalisation into the graph, which then takes uint8 RGB crops (N, H, W, 3).
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..data.transforms import TTA
from ..errors import UserError, missing_extra
from ..io import export_meta
from ..io.atomic import atomic_write, atomic_write_bytes, check_output
from ..io.weights import Loaded, load_weights, save_safetensors


def _onnx_lrn(x: Any, size: int, alpha: float, beta: float, k: float, groups: int) -> Any:
    """``alexnet::lrn`` as ONNX: one ``LRN`` per tower (Split, LRN, Concat), same alpha/n convention."""
    from onnxscript import opset18 as op

    if groups == 1:
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)
    parts = op.Split(x, num_outputs=groups, axis=1)
    return op.Concat(*[op.LRN(p, size=size, alpha=alpha, beta=beta, bias=k) for p in parts], axis=1)


def _with_lrn_op(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose GroupedLRN layers run as the ``alexnet::lrn`` operator, for the ONNX LRN mapping."""
    from ..models.lrn import GroupedLRN, LRNOp

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GroupedLRN):
                setattr(parent, name, LRNOp(child))
    return model


class WithPreprocess(torch.nn.Module):
    """``model`` behind the normaliser: uint8 RGB crops (N, H, W, 3) in, logits out. The same operations in the
    same order as ``Preprocess.normalizer`` (x / 255, then mean/std, or minus the mean image's centre window)."""

    mean_image: torch.Tensor  # the buffers (pixel mode: mean_image; else mean and std)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: torch.nn.Module, pre: Preprocess) -> None:
        super().__init__()
        self.model = model
        mi = pre.mean_image_at_resize()
        self.pixel_mode = mi is not None
        if mi is not None:
            self.register_buffer("mean_image", TTA["center"](mi, pre.crop)[0].contiguous())
        else:
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32)[:, None, None])
            self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
        x = x - self.mean_image if self.pixel_mode else (x - self.mean) / self.std
        return self.model(x)


def _sample(b: int, size: int, in_graph: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(b)
    if in_graph:
        return torch.randint(0, 256, (b, size, size, 3), generator=g, dtype=torch.uint8)
    return torch.randn(b, 3, size, size, generator=g)


def _network(loaded: Loaded, with_preprocess: bool) -> torch.nn.Module:
    model = loaded.model.cpu().eval()
    return WithPreprocess(model, loaded.preprocess).eval() if with_preprocess else model


def export_onnx(
    loaded: Loaded, out: Path, opset: int = 18, lrn_op: bool = True, with_preprocess: bool = False
) -> float:
    """Export with a dynamic batch axis; returns the max |onnxruntime - PyTorch| on sample inputs. ``lrn_op``:
    LRN as ONNX's ``LRN`` operator; else as primitive operators (Pow, Mul, Add, ...) for runtimes without it.
    The export metadata (export_meta.py) is the ``metadata_props`` entry ``alexnet``."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; say so before exporting)
        import onnxruntime as ort
    except ImportError:
        raise missing_extra("ONNX export", "export") from None
    size = loaded.preprocess.crop
    model = _network(loaded, with_preprocess)
    batch = torch.export.Dim("batch", min=1, max=4096)
    table: dict[Callable[..., Any], Callable[..., Any]] | None = (
        {torch.ops.alexnet.lrn.default: _onnx_lrn} if lrn_op else None
    )
    program = torch.onnx.export(_with_lrn_op(model) if lrn_op else model, (_sample(2, size, with_preprocess),),
                                None, input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                                custom_translation_table=table)  # fmt: skip
    assert program is not None  # (None only without dynamo=True)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = export_meta.ONNX_KEY, export_meta.dumps(export_meta.document(loaded, with_preprocess))
    atomic_write_bytes(out, proto.SerializeToString())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in (1, 3):
        xi = _sample(b, size, with_preprocess)
        got = session.run(None, {"images": xi.numpy()})[0]
        with torch.no_grad():
            ref = model(xi).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_pt2(loaded: Loaded, out: Path, with_preprocess: bool = False) -> float:
    """A ``torch.export`` ExportedProgram with a dynamic batch axis, loadable with ``torch.export.load`` alone
    (no alexnet import: LRN is plain tensor ops); the export metadata as ``extra_files['alexnet.json']``.
    Returns the max |loaded program - PyTorch| on batches of 1 and 3."""
    size = loaded.preprocess.crop
    model = _network(loaded, with_preprocess)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (_sample(2, size, with_preprocess),), dynamic_shapes={"x": {0: batch}})
    meta = export_meta.dumps(export_meta.document(loaded, with_preprocess, input_name="x"))
    # in memory first: torch.export.save aborts the process (a C++ terminate) when the disk fills under it
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={export_meta.PT2_FILE: meta})
    atomic_write_bytes(out, buf.getbuffer())
    reloaded = torch.export.load(str(out)).module()
    worst = 0.0
    for b in (1, 3):
        xi = _sample(b, size, with_preprocess)
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
    chosen = fmt or implied
    if chosen is None:
        raise UserError(f"--format is needed: --out {out} does not name one (.safetensors, .onnx, .pt2 or .ts; "
                        "--format hub for a folder)")  # fmt: skip
    if fmt is not None and implied not in (None, fmt):
        raise UserError(f"--out {out} names a {implied} file but --format is {fmt}; rename one of them")
    return chosen


def run_export(weights: str, fmt: str | None, out: Path, force: bool = False, lrn_op: bool = True,
               with_preprocess: bool = False, results: Path | None = None, license: str = "unknown") -> int:  # fmt: skip
    """`alexnet export`: never overwrites ``out`` without ``force``; prints what was written."""
    fmt = pick_format(fmt, out)
    if fmt == "hub":
        from ..io.modelcard import check_folder, read_results, write_hub_folder

        check_folder(out, force)
        scores = read_results(results) if results else None
    else:
        check_output(out, force)
    if not lrn_op and fmt != "onnx":
        raise UserError("--no-lrn-op applies to --format onnx only")
    if with_preprocess and fmt not in ("onnx", "pt2"):
        raise UserError("--with-preprocess applies to --format onnx and pt2 (graphs that take uint8 crops)")
    if (results is not None or license != "unknown") and fmt != "hub":
        raise UserError("--results and --license describe a Hub model card: they apply to --format hub only")
    loaded = load_weights(weights, "cpu")
    if fmt == "hub":
        print(write_hub_folder(loaded, out, _run_dir(weights), scores, license))
        return 0
    print(export(loaded, fmt, out, lrn_op, with_preprocess))
    return 0


def _run_dir(weights: str) -> Path | None:
    """The run directory ``weights`` names (the run, or a checkpoint in its checkpoints/), for its metrics."""
    p = Path(weights)
    run = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else None
    return run if run is not None and (run / "metrics.jsonl").is_file() else None


def export(loaded: Loaded, fmt: str, out: Path, lrn_op: bool = True, with_preprocess: bool = False) -> str:
    """Write ``loaded`` as ``fmt`` to ``out`` (whose directory exists: ``check_output``)."""
    takes = "; takes uint8 RGB crops (N, H, W, 3), normalised inside" if with_preprocess else ""
    if fmt == "safetensors":
        save_safetensors(loaded, out)
        return f"wrote {out} (weights + metadata: {loaded.variant}, {len(loaded.class_names)} classes)"
    if fmt == "onnx":
        diff = export_onnx(loaded, out, lrn_op=lrn_op, with_preprocess=with_preprocess)
        how = (
            ""
            if not _has_lrn(loaded.model)
            else ", LRN as the LRN operator"
            if lrn_op
            else ", LRN as primitive operators"
        )
        return f"wrote {out}{how}{takes}; onnxruntime vs PyTorch max abs difference {diff:.2e}"
    if fmt == "pt2":
        diff = export_pt2(loaded, out, with_preprocess)
        return f"wrote {out}{takes}; torch.export program vs PyTorch max abs difference {diff:.2e}"
    diff = export_torchscript(loaded, out)
    return f"wrote {out}; TorchScript (deprecated by PyTorch: prefer pt2) vs PyTorch max abs difference {diff:.2e}"


def _has_lrn(model: torch.nn.Module) -> bool:
    from ..models.lrn import GroupedLRN

    return any(isinstance(m, GroupedLRN) for m in model.modules())
