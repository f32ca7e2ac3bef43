"""ONNX files this package exported, run in onnxruntime wherever `predict` and `evaluate` take weights: the export
metadata (export_meta.py) gives the classes and the preprocessing, mean images and graphs that normalise inside
(``export --with-preprocess``) included, so the output is the PyTorch path's, in its format. ONNX files from
elsewhere (the model zoo's bvlcalexnet) carry no such metadata: they are converted once with import-weights.

``OnnxModel`` stands in for the network: a module whose forward runs the graph in onnxruntime (float32; no
autocast, no channels_last). A graph that normalises inside takes the uint8 pixels: its callers skip the
normaliser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, missing_extra
from ..inference import ComputePath, compute_path
from ..models import Network
from . import export_meta
from .weights import Loaded, load_weights

_LOGITS_ONLY = (
    "an ONNX graph gives the logits only: its layers' outputs come from the weights it was exported "
    "from (the run or .safetensors file)"
)


class OnnxModel(Network):
    """An onnxruntime InferenceSession as a module: (B, 3, H, W) in (normalised float, or uint8 for a graph that
    normalises inside), logits (B, classes) out on the input's device."""

    def __init__(self, session: Any, meta: dict[str, Any]) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.takes_uint8 = bool(meta["in_graph"])
        # the mean image inside such a graph is its centre window: other views would subtract the wrong pixels
        self.centre_only = self.takes_uint8 and meta["preprocess"].mean_image is not None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise UserError(_LOGITS_ONLY)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise UserError(_LOGITS_ONLY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device, x = x.device, x.detach().cpu()
        if self.takes_uint8:
            if x.dtype != torch.uint8:
                raise TypeError(f"this ONNX graph takes uint8 pixels, got {x.dtype}")
            x = x.permute(0, 2, 3, 1)  # NHWC, the graph's input
        else:
            x = x.float()
        return torch.from_numpy(self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]).to(device)


def _session(path: Path, device: torch.device) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_extra(f"{path}: running ONNX files", "export") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the process's thread setting, as PyTorch's path has
    opts.log_severity_level = 3  # errors only: no warnings on stderr about unused initializers and the like
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device.type != "cpu":
        raise UserError(f"{path}: onnxruntime here runs on the CPU only (providers: "
                        f"{', '.join(ort.get_available_providers())}); use --device cpu")  # fmt: skip
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
        raise UserError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None


def load_for_inference(spec: str, device: torch.device, towers: str | None = None) -> Loaded:
    """``load_weights``, or for an ONNX file this package exported, the file in onnxruntime as the model."""
    path = Path(spec)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return load_weights(spec, device, towers)
    session = _session(path, device)
    props = session.get_modelmeta().custom_metadata_map
    if export_meta.ONNX_KEY not in props:
        if {"variant", "class_names", "preprocess"} <= set(props):  # what this package's exports held before
            raise UserError(f"{path}: exported by an earlier version of this package, without its full "
                            "preprocessing (mean images were lost): export it again from its run or weights file")  # fmt: skip
        return load_weights(spec, device, towers)  # a foreign ONNX file: says how to convert it
    if towers:
        raise UserError("--towers splits a PyTorch network over two devices; an ONNX file runs whole in onnxruntime")
    meta = export_meta.parse(props[export_meta.ONNX_KEY], str(path))
    model = OnnxModel(session, meta)
    return Loaded(model, meta["variant"], meta["class_names"], meta["preprocess"], None, str(path),
                  dict(meta.get("model_options") or {}), meta.get("published"))  # fmt: skip


def takes_uint8(model: nn.Module) -> bool:
    """True for a graph that scales and normalises the pixels itself: give it the uint8 crops."""
    return bool(getattr(model, "takes_uint8", False))


def inference_path(model: nn.Module, device: torch.device, amp: str, tta: str,
                   test_size: int | None = None) -> ComputePath:  # fmt: skip
    """``compute_path`` for a PyTorch network; for an ONNX one, float32 as exported, and what it cannot do
    refused in one line."""
    if not isinstance(model, OnnxModel):
        return compute_path(model, device, amp)
    if amp not in ("auto", "none"):
        raise UserError(f"--amp {amp}: an ONNX file runs in float32 as exported; --amp applies to PyTorch weights")
    if test_size is not None:
        raise UserError("--test-size needs PyTorch weights: an ONNX graph's input size is fixed at its crop")
    if model.centre_only and tta != "center":
        raise UserError(f"--tta {tta}: this ONNX graph subtracts its mean image's centre window inside, so it "
                        "takes centre crops only; use --tta center, or the default export (float input)")  # fmt: skip
    return ComputePath("none", False)
