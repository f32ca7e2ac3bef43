"""Layer table measured from the live model with forward hooks (nothing hard-coded)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models import create_model, get_model_info
from ..models.lrn import GroupedLRN

LAYER_TYPES = (
    nn.Conv2d,
    nn.Linear,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.LocalResponseNorm,
    GroupedLRN,
    nn.BatchNorm2d,
)


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]  # [C, H, W] or [F]
    params: int
    macs: int
    kernel: str = ""
    filters: int | None = None
    stride: str = ""
    padding: str = ""
    groups: int | None = None


def _pair(v: int | str | tuple[int, ...]) -> str:  # (a str: Conv2d's padding="same")
    if isinstance(v, tuple):
        return "x".join(map(str, v)) if len(set(v)) > 1 else str(v[0])
    return str(v)


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return m.out_channels * out.shape[-2] * out.shape[-1] * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    return 0


def layer_table(model: nn.Module, input_size: int) -> list[LayerRow]:
    rows: list[LayerRow] = []
    handles = []
    for qualname, mod in model.named_modules():
        if not isinstance(mod, LAYER_TYPES):
            continue
        short = qualname.rsplit(".", 1)[-1]
        name = qualname if short.isdigit() else short

        def hook(m: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
            row = LayerRow(
                name=name,
                type=type(m).__name__,
                output_shape=list(out.shape[1:]),
                params=sum(p.numel() for p in m.parameters()),
                macs=_macs(m, out),
            )
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                row.kernel = _pair(m.kernel_size)
                row.stride = _pair(m.stride)
                row.padding = _pair(m.padding)
            if isinstance(m, nn.Conv2d):
                row.filters = m.out_channels
                row.groups = m.groups
            rows.append(row)

        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rows


def summarize(name: str, input_size: int | None = None, num_classes: int = 1000) -> dict:
    info = get_model_info(name)
    size = input_size or info.input_size
    model = create_model(name, num_classes=num_classes, init="default")
    rows = layer_table(model, size)
    return {
        "model": name,
        "input_size": size,
        "num_classes": num_classes,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r.macs for r in rows),
        "layers": [asdict(r) for r in rows],
    }


def _shape_str(shape: list[int]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(map(str, shape))


def format_table(summary: dict) -> str:
    head = ["layer", "type", "kernel", "filters", "stride", "pad", "groups", "output (HxWxC)", "params", "MACs"]
    body = []
    for r in summary["layers"]:
        body.append(
            [
                r["name"],
                r["type"],
                r["kernel"],
                "" if r["filters"] is None else str(r["filters"]),
                r["stride"],
                r["padding"],
                "" if r["groups"] is None else str(r["groups"]),
                _shape_str(r["output_shape"]),
                f"{r['params']:,}",
                f"{r['macs']:,}",
            ]
        )
    body.append(["total", "", "", "", "", "", "", "", f"{summary['params']:,}", f"{summary['macs']:,}"])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5, 6, 8, 9}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    title = (
        f"{summary['model']}: input {summary['input_size']}x{summary['input_size']}x3, {summary['num_classes']} classes"
    )
    rule = "-" * len(fmt(head))
    return "\n".join([title, fmt(head), rule, *map(fmt, body[:-1]), rule, fmt(body[-1])])


def print_summary(name: str, input_size: int | None = None, num_classes: int = 1000, as_json: bool = False) -> int:
    """`alexnet summary`: the table (or one JSON object) on stdout."""
    s = summarize(name, input_size, num_classes)
    print(json.dumps(s) if as_json else format_table(s))
    return 0
