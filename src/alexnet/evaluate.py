"""Evaluation: top-1/top-5, loss and per-class accuracy, with test-time augmentation.

Exact under DDP: each rank sees a disjoint slice of the validation set (no padding, no
dropped remainder) and the sums are all-reduced, so ``n`` is the dataset size for any world size.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.loaders import Batches
from .data.transforms import TTA, Normalizer
from .distributed import all_reduce_sum

# Krizhevsky et al. 2012, Table 1: one CNN on ILSVRC-2012 validation.
PAPER_ILSVRC2012 = {"top1_err": 0.407, "top5_err": 0.182}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none" or device.type not in ("cpu", "cuda", "mps"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    crop: int,
    tta: str,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> torch.Tensor:
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
        d: dict[str, Any] = {
            "top1": self.top1,
            "top5": self.top5,
            "top1_err": 1 - self.top1,
            "top5_err": 1 - self.top5,
            "loss": self.loss,
            "n": self.n,
            "tta": self.tta,
        }
        names = class_names or [str(i) for i in range(len(self.per_class))]
        d["per_class"] = {names[i]: a for i, a in enumerate(self.per_class)}
        return d


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    normalizer: Normalizer,
    crop: int,
    num_classes: int,
    device: torch.device,
    tta: str = "center",
    amp: str = "none",
    channels_last: bool = False,
) -> EvalResult:
    was_training = model.training
    model.eval()
    norm = normalizer.to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.float64, device=device)
    correct5 = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    for x, y, _ in batches.epoch(0):
        x = norm(x.to(device, non_blocking=True))
        y = y.to(device, non_blocking=True)
        keep = y >= 0  # images that failed to decode carry label -100
        probs = predict_probs(model, x, crop, tta, device, amp, channels_last)[keep]
        y = y[keep]
        loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").double()
        top = probs.topk(min(5, num_classes), dim=1).indices
        correct1 += (top[:, 0] == y).sum()
        correct5 += (top == y[:, None]).any(1).sum()
        count += y.numel()
        confusion.index_put_((y, top[:, 0]), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    for t in (loss_sum, correct1, correct5, count, confusion):
        all_reduce_sum(t)
    model.train(was_training)
    n = int(count.item())
    support = confusion.sum(1)
    per_class = [(confusion[i, i] / support[i]).item() if support[i] > 0 else None for i in range(num_classes)]
    return EvalResult(
        top1=correct1.item() / max(n, 1),
        top5=correct5.item() / max(n, 1),
        loss=loss_sum.item() / max(n, 1),
        n=n,
        tta=tta,
        per_class=per_class,
        confusion=confusion.long().tolist(),
    )


def format_report(res: EvalResult, class_names: list[str], imagenet: bool, source: str) -> str:
    from .data.classes import display_name

    lines = [
        f"{source}: {res.n} images, tta={res.tta}",
        f"  top-1 accuracy {res.top1 * 100:6.2f} %   (error {100 - res.top1 * 100:6.2f} %)",
        f"  top-5 accuracy {res.top5 * 100:6.2f} %   (error {100 - res.top5 * 100:6.2f} %)",
        f"  loss           {res.loss:.4f}",
    ]
    if imagenet:
        p = PAPER_ILSVRC2012
        lines.append(
            f"  paper (1 CNN, ILSVRC-2012 val): top-1 error {p['top1_err'] * 100:.1f} %, top-5 error {p['top5_err'] * 100:.1f} %"
        )
    shown = [(a, c) for c, a in zip(class_names, res.per_class) if a is not None]
    if shown and len(shown) <= 50:
        lines.append("  per-class top-1:")
        lines += [f"    {display_name(c):40s} {a * 100:6.2f} %" for a, c in shown]
    elif shown:
        worst = sorted(shown)[:10]
        lines.append("  10 worst classes:")
        lines += [f"    {display_name(c):40s} {a * 100:6.2f} %" for a, c in worst]
    return "\n".join(lines)


def to_json(res: EvalResult, class_names: list[str], imagenet: bool) -> str:
    d = res.as_dict(class_names)
    if imagenet:
        d["paper"] = PAPER_ILSVRC2012
    return json.dumps(d)
