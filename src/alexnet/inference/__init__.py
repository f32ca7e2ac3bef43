"""Inference primitives shared by training's validation and the evaluate, predict, features and figures
commands: the autocast context, softmax averaged over test-time views, the evaluation loop, and layer
activations as feature vectors.

Evaluation is exact under DDP: each rank sees a disjoint slice of the validation set (no padding, no
dropped remainder) and the sums are all-reduced, so ``n`` is the dataset size for any world size.
Counts are int64 and sums float32 on the device: nothing here needs float64 (MPS has none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.batches import Batches
from ..data.transforms import TTA, Normalizer
from ..engine import tuning
from ..errors import UserError
from ..parallel.distributed import all_reduce_sum


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none" or device.type not in ("cpu", "cuda", "mps"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class ComputePath:
    amp: str  # none | bf16 | fp16
    channels_last: bool


def compute_path(model: nn.Module, device: torch.device, amp: str = "auto") -> ComputePath:
    """Training's ``auto`` compute path, for inference (bf16 where native, fp16 on sm_70-75 GPUs, channels_last
    on CPUs and GPUs; tuning.py); puts ``model`` in that memory format. ``amp`` overrides the precision."""
    t = tuning.resolve(TrainConfig(amp=amp), device)
    if t.amp == "fp16" and device.type == "cpu":
        raise UserError("--amp fp16 needs a GPU; use bf16 or none on the CPU")
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    return ComputePath(t.amp, bool(t.channels_last))


def predict_probs(model: nn.Module, x: torch.Tensor, crop: int, tta: str, device: torch.device, amp: str = "none",
                  channels_last: bool = False) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities averaged over the TTA views of a normalised (B, 3, S, S) batch."""
    views = TTA[tta](x, crop)
    batch = torch.cat(views, 0).to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        logits = model(batch)
    probs = logits.float().softmax(-1)
    return probs.view(len(views), x.shape[0], -1).mean(0)  # (B, classes)


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    tta: str
    per_class: list[float | None]  # accuracy per class (None: no samples)
    confusion: list[list[int]]

    def as_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"top1": self.top1, "top5": self.top5, "top1_err": 1 - self.top1,
                             "top5_err": 1 - self.top5, "loss": self.loss, "n": self.n, "tta": self.tta}  # fmt: skip
        names = class_names or [str(i) for i in range(len(self.per_class))]
        d["per_class"] = {names[i]: a for i, a in enumerate(self.per_class)}
        return d


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, normalizer: Normalizer | None, crop: int, num_classes: int,
             device: torch.device, tta: str = "center", amp: str = "none", channels_last: bool = False,
             test_size: int | None = None) -> EvalResult:  # fmt: skip
    """``test_size``: feed the network ``test_size`` px views of the same field of view as ``crop`` (the images
    resized by test_size / crop first): testing above the training resolution (Touvron et al. 2019).
    ``normalizer`` None: the model takes the uint8 pixels (a graph that normalises inside)."""
    was_training = model.training
    model.eval()
    norm = normalizer.to(device) if normalizer is not None else (lambda x: x)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    counts = torch.zeros(3, dtype=torch.int64, device=device)  # top-1 right, top-5 right, images
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for x, y, _ in batches.epoch(0):
        x = norm(x.to(device, non_blocking=True))
        if test_size and test_size != crop:
            side = round(x.shape[-1] * test_size / crop)
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        y = y.to(device, non_blocking=True)
        keep = y >= 0  # images that failed to decode carry label -100: weighed 0, not indexed out (no sync)
        probs = predict_probs(model, x, test_size or crop, tta, device, amp, channels_last)
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum", ignore_index=-100)
        top = probs.topk(min(5, num_classes), dim=1).indices
        counts += torch.stack([(top[:, 0] == y).sum(), (top == y[:, None]).any(1).sum(), keep.sum()])
        confusion.index_put_((torch.where(keep, y, 0), top[:, 0]), keep.long(), accumulate=True)
    for t in (loss_sum, counts, confusion):
        all_reduce_sum(t)
    model.train(was_training)
    (right1, right5, n), matrix, loss = counts.tolist(), confusion.tolist(), loss_sum.item()  # read once a pass
    per_class = [row[i] / total if (total := sum(row)) else None for i, row in enumerate(matrix)]
    return EvalResult(top1=right1 / max(n, 1), top5=right5 / max(n, 1), loss=loss / max(n, 1), n=n, tta=tta,
                      per_class=per_class, confusion=matrix)  # fmt: skip


@runtime_checkable
class SplitNetwork(Protocol):
    """A network in two halves, as timm splits them: the convolutions to pool5, then the classifier."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


def layer_fn(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """fc7 (default): the 4096-d activations the paper's Fig. 4 compares; pool5: the 9216-d conv features;
    fc6; logits; or any module name from `alexnet summary` (e.g. conv5), flattened."""
    if layer in ("fc7", "pool5"):
        if not isinstance(model, SplitNetwork):
            raise UserError(
                f"layer {layer} needs forward_features and forward_head, which {type(model).__name__} lacks"
            )
        split = model
        if layer == "fc7":
            return lambda x: split.forward_head(split.forward_features(x), pre_logits=True)
        return lambda x: torch.flatten(split.forward_features(x), 1)
    if layer == "logits":
        return lambda x: model(x)
    modules = dict(model.named_modules())
    aliases = {"fc6": ["classifier.relu6", "classifier.2"]}
    names = aliases.get(layer, [layer, f"features.{layer}", f"classifier.{layer}"])
    target = next((modules[n] for n in names if n in modules), None) if layer else None  # "": the whole network
    shown = [n for n in modules if n and "." in n]
    if target is None:
        raise UserError(f"unknown layer {layer!r}; use fc7, fc6, pool5, logits or one of: {', '.join(shown)}")

    def fn(x: torch.Tensor) -> torch.Tensor:
        grabbed: list[torch.Tensor] = []
        handle = target.register_forward_hook(lambda _m, _i, out: grabbed.append(out.detach().clone()))
        try:
            model(x)
        finally:
            handle.remove()
        if not grabbed:  # a container whose layers the network calls one by one (a Sequential it does not call)
            inside = [n for n in shown if n.startswith(f"{layer}.")][:4]
            raise UserError(f"layer {layer!r} is never called as a whole; name a layer in it ({', '.join(inside)}, ...)"
                            " or use fc7, fc6, pool5, logits")  # fmt: skip
        return torch.flatten(grabbed[0], 1)

    return fn


def feature_fn(model: nn.Module, crop: int, layer: str = "fc7",
               path: ComputePath | None = None) -> Callable[[torch.Tensor], torch.Tensor]:  # fmt: skip
    """Normalised full-size batch -> the centre crop's ``layer`` activations, flattened, in float32. Shared by
    the `features` command and the neighbours figure."""
    fn, path = layer_fn(model, layer), path or ComputePath("none", False)

    def features(x: torch.Tensor) -> torch.Tensor:
        view = TTA["center"](x, crop)[0]
        if path.channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, path.amp):
            return fn(view).float()

    return features
