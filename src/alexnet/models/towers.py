"""The paper's two-device split (§3.2): one AlexNet whose two towers live on two devices.

Tower A holds conv1 kernels 0-47, conv2/conv4/conv5 group 0 and fc6/fc7 neurons 0-2047;
tower B the other halves. Devices talk exactly where the paper's GPUs did:
- into conv3: each tower computes its 192 conv3 maps from all 256 conv2 maps;
- into fc6 and fc7: each tower holds 2048 of the 4096 neurons and reads all inputs;
- into fc8: fc8 lives whole on device A and reads both towers' fc7 halves (the paper
  splits fc8 too; one 4096 x classes layer on A costs one 2048-float transfer per image).

The weights are the grouped single-device ``AlexNet``'s, sliced. ``state_dict()`` returns the
grouped form and ``load_state_dict()`` takes it, so checkpoints move between the two forms
with no conversion.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .alexnet import AlexNet
from .layers import DROPOUT_STREAMS, KeyedDropout, Network, check_input_size, pool_to_grid
from .lrn import PAPER_LRN, GroupedLRN

TWO_TOWER_MODELS = ("alexnet", "alexnet_bn")


def check_towers(variant: str, spec: str, what: str = "--towers") -> list[str]:
    """The one precondition of the two-device split: a two-tower model and two device names."""
    if variant not in TWO_TOWER_MODELS:
        raise UserError(f"{what} needs a two-tower model (alexnet or alexnet_bn), not {variant}")
    names = [d.strip() for d in spec.split(",")]
    if len(names) != 2 or not all(names):
        raise UserError(f"{what} must name two devices like cuda:0,cuda:1, got {spec!r}")
    return names


# grouped-model key -> (tower slicing rule). "out": rows split in halves; "all": only on tower A.
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
BNS = ("bn1", "bn2", "bn3", "bn4", "bn5")
FCS = ("fc6", "fc7")


class _Tower(nn.Module):
    def __init__(self, norm: str, lrn: dict[str, float], dropout: float, offset: int = 0) -> None:
        super().__init__()
        bn = norm == "bn"
        self.bn = bn
        self.conv1 = nn.Conv2d(3, 48, 11, stride=4, bias=not bn)
        self.conv2 = nn.Conv2d(48, 128, 5, padding=2, bias=not bn)
        self.conv3 = nn.Conv2d(256, 192, 3, padding=1, bias=not bn)  # reads both towers
        self.conv4 = nn.Conv2d(192, 192, 3, padding=1, bias=not bn)
        self.conv5 = nn.Conv2d(192, 128, 3, padding=1, bias=not bn)
        if bn:
            self.bn1, self.bn2 = nn.BatchNorm2d(48), nn.BatchNorm2d(128)
            self.bn3, self.bn4, self.bn5 = nn.BatchNorm2d(192), nn.BatchNorm2d(192), nn.BatchNorm2d(128)
        else:
            self.norm = GroupedLRN(int(lrn["size"]), lrn["alpha"], lrn["beta"], lrn["k"], groups=1)
        self.pool = nn.MaxPool2d(3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc6 = nn.Linear(256 * 6 * 6, 2048)  # reads both towers
        self.fc7 = nn.Linear(4096, 2048)  # reads both towers
        # the grouped model's fc6/fc7 units offset .. offset + 2047: the same masks as the single-device model
        self.drop6 = KeyedDropout(dropout, DROPOUT_STREAMS["fc6"], offset)
        self.drop7 = KeyedDropout(dropout, DROPOUT_STREAMS["fc7"], offset)
        self.relu = nn.ReLU(inplace=True)

    def _block(self, x: torch.Tensor, conv: str) -> torch.Tensor:
        x = getattr(self, conv)(x)
        if self.bn:
            x = getattr(self, "bn" + conv[-1])(x)
        return self.relu(x)

    def stage1(self, x: torch.Tensor) -> torch.Tensor:  # image -> own half of pool2
        x = self._block(x, "conv1")  # (B, 48, 55, 55)
        x = self.pool(x if self.bn else self.norm(x))  # (B, 48, 27, 27)
        x = self._block(x, "conv2")  # (B, 128, 27, 27)
        return self.pool(x if self.bn else self.norm(x))  # (B, 128, 13, 13)

    def stage2(self, both: torch.Tensor) -> torch.Tensor:  # all 256 pool2 maps -> own half of pool3
        x = self._block(both, "conv3")  # (B, 192, 13, 13)
        x = self._block(x, "conv4")  # (B, 192, 13, 13)
        x = self._block(x, "conv5")  # (B, 128, 13, 13)
        return pool_to_grid(self.pool(x), self.avgpool)  # (B, 128, 6, 6)


class TowerAlexNet(Network):
    """AlexNet with tower A on ``devices[0]`` and tower B on ``devices[1]`` (model parallel)."""

    min_input_size = AlexNet.min_input_size

    def __init__(self, num_classes: int, devices: tuple[torch.device | str, torch.device | str], *, norm: str = "lrn",
                 dropout: float = 0.5, lrn: dict[str, float] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.devices = (torch.device(devices[0]), torch.device(devices[1]))
        self.norm = norm
        self.num_classes = num_classes
        lrn = lrn or {"size": PAPER_LRN.size, "alpha": PAPER_LRN.alpha, "beta": PAPER_LRN.beta, "k": PAPER_LRN.k}
        self.tower_a = _Tower(norm, lrn, dropout).to(self.devices[0])
        self.tower_b = _Tower(norm, lrn, dropout, offset=2048).to(self.devices[1])
        self.fc8 = nn.Linear(4096, num_classes).to(self.devices[0])

    @classmethod
    def from_grouped(cls, model: nn.Module, devices: tuple[torch.device | str, torch.device | str]) -> TowerAlexNet:
        if not isinstance(model, AlexNet):  # (callers check the variant first: check_towers)
            raise UserError(f"the two-tower split needs alexnet or alexnet_bn, not a {type(model).__name__}")
        m = model.features.get_submodule("norm1") if model.norm == "lrn" else None
        if isinstance(m, GroupedLRN) and m.groups != 2:
            raise UserError(
                "the two-tower split needs the paper's per-tower LRN (lrn_groups=2); these weights "
                "normalise across both towers (lrn_groups=1, e.g. Caffe's bvlc_alexnet)"
            )
        lrn = {"size": m.size, "alpha": m.alpha, "beta": m.beta, "k": m.k} if isinstance(m, GroupedLRN) else None
        drop6 = model.classifier.get_submodule("drop6")
        assert isinstance(drop6, KeyedDropout)
        t = cls(model.num_classes, devices, norm=model.norm, dropout=drop6.p, lrn=lrn)
        t.load_state_dict(model.state_dict())
        return t

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each tower's half of pool3, (B, 128, 6, 6), on its own device."""
        check_input_size(x, self.min_input_size, "alexnet (towers)")
        da, db = self.devices
        a = self.tower_a.stage1(x.to(da))  # (B, 128, 13, 13) on A
        b = self.tower_b.stage1(x.to(db))  # (B, 128, 13, 13) on B
        both_a = torch.cat([a, b.to(da)], 1)  # cross-device: into conv3
        both_b = torch.cat([a.to(db), b], 1)
        return self.tower_a.stage2(both_a), self.tower_b.stage2(both_b)

    def _head(self, a: torch.Tensor, b: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """From the towers' halves of fc6's input, (B, 4608) on A and on B: logits, or fc7's output, on A."""
        da, db = self.devices
        f_a = torch.cat([a, b.to(da)], 1)  # (B, 9216) cross-device: into fc6
        f_b = torch.cat([a.to(db), b], 1)
        ta, tb = self.tower_a, self.tower_b
        h_a, h_b = ta.drop6(ta.relu(ta.fc6(f_a))), tb.drop6(tb.relu(tb.fc6(f_b)))  # (B, 2048) each
        g_a = torch.cat([h_a, h_b.to(da)], 1)  # cross-device: into fc7
        g_b = torch.cat([h_a.to(db), h_b], 1)
        h_a, h_b = ta.drop7(ta.relu(ta.fc7(g_a))), tb.drop7(tb.relu(tb.fc7(g_b)))
        fc7 = torch.cat([h_a, h_b.to(da)], 1)  # (B, 4096) on A: into fc8
        return fc7 if pre_logits else self.fc8(fc7)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._features(x)
        return torch.cat([a, b.to(self.devices[0])], 1)  # (B, 256, 6, 6) on A

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1).to(self.devices[0])  # (B, 9216): tower A's maps, then B's
        half = x.shape[1] // 2
        return self._head(x[:, :half], x[:, half:].to(self.devices[1]), pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # each tower's maps stay on its device
        a, b = self._features(x)
        return self._head(torch.flatten(a, 1), torch.flatten(b, 1))

    # --- the grouped single-device layout, both ways ---------------------------------------------------

    def _pairs(self) -> list[tuple[str, str, str]]:
        """(grouped key, tower attribute path, how): halves of rows, or the whole tensor on A."""
        out = []
        for conv in CONVS:
            out.append((f"features.{conv}.weight", f"{conv}.weight", "rows"))
            if self.norm == "lrn":
                out.append((f"features.{conv}.bias", f"{conv}.bias", "rows"))
        if self.norm == "bn":
            for bn in BNS:
                for p in ("weight", "bias", "running_mean", "running_var"):
                    out.append((f"features.{bn}.{p}", f"{bn}.{p}", "rows"))
                out.append((f"features.{bn}.num_batches_tracked", f"{bn}.num_batches_tracked", "same"))
        for fc in FCS:
            out += [
                (f"classifier.{fc}.weight", f"{fc}.weight", "rows"),
                (f"classifier.{fc}.bias", f"{fc}.bias", "rows"),
            ]
        return out

    def state_dict(self, *args: Any, destination: dict[str, Any] | None = None, prefix: str = "",  # type: ignore[override]
                   keep_vars: bool = False) -> OrderedDict[str, torch.Tensor]:  # fmt: skip
        """The grouped single-device model's state_dict (CPU copies), under ``prefix``, into ``destination``."""
        sd: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, path, how in self._pairs():
            ta = (
                self.tower_a.get_parameter(path)
                if "running" not in path and "num_batches" not in path
                else self.tower_a.get_buffer(path)
            )
            tb = (
                self.tower_b.get_parameter(path)
                if "running" not in path and "num_batches" not in path
                else self.tower_b.get_buffer(path)
            )
            sd[key] = (
                ta.detach().cpu().clone() if how == "same" else torch.cat([ta.detach().cpu(), tb.detach().cpu()], 0)
            )
        sd["classifier.fc8.weight"] = self.fc8.weight.detach().cpu().clone()
        sd["classifier.fc8.bias"] = self.fc8.bias.detach().cpu().clone()
        out = destination if destination is not None else OrderedDict()
        out.update((prefix + k, v) for k, v in sd.items())
        return out  # type: ignore[return-value]

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        expected = {k for k, _, _ in self._pairs()} | {"classifier.fc8.weight", "classifier.fc8.bias"}
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(f"tower model: missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
        with torch.no_grad():
            for key, path, how in self._pairs():
                if key not in state_dict:
                    continue
                full = state_dict[key]
                for i, tower in enumerate((self.tower_a, self.tower_b)):
                    dst: torch.Tensor
                    try:
                        dst = tower.get_parameter(path)
                    except AttributeError:
                        dst = tower.get_buffer(path)
                    half = full if how == "same" else full.chunk(2, 0)[i]
                    dst.copy_(half)
            for name in ("weight", "bias"):
                if f"classifier.fc8.{name}" in state_dict:
                    getattr(self.fc8, name).copy_(state_dict[f"classifier.fc8.{name}"])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


# --- optimizer state in the grouped form, so a checkpoint resumes with or without --towers ----------------


def _grouped_names(norm: str) -> list[str]:
    with torch.device("meta"):
        return [n for n, _ in AlexNet(1, norm=norm).named_parameters() if not n.startswith("classifier.fc8")]


def _tower_names(norm: str) -> list[str]:
    with torch.device("meta"):
        names = [n for n, _ in _Tower(norm, {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}, 0.5).named_parameters()]
    return [f"tower_a.{n}" for n in names] + [f"tower_b.{n}" for n in names] + ["fc8.weight", "fc8.bias"]


def _mapping(norm: str) -> list[tuple[list[int], bool]]:
    """For each grouped parameter in order (fc8 last): its index or indices in the tower form's parameter
    order, and whether the state is split in halves of rows (else fc8, whole on device A)."""
    towers = {n: i for i, n in enumerate(_tower_names(norm))}
    return [([towers[f"tower_a.{n.split('.', 1)[1]}"], towers[f"tower_b.{n.split('.', 1)[1]}"]], True)
            for n in _grouped_names(norm)] + [([towers["fc8.weight"]], False), ([towers["fc8.bias"]], False)]  # fmt: skip


def _is_rows(v: Any) -> bool:
    return torch.is_tensor(v) and v.dim() > 0


def optimizer_state_to_grouped(state: dict[str, Any], norm: str) -> dict[str, Any]:
    """An optimizer state_dict of a TowerAlexNet (parameters in tower order) -> the grouped model's."""
    mapping, old = _mapping(norm), state["state"]
    new: dict[int, Any] = {}
    for g, (src, rows) in enumerate(mapping):
        parts = [old[i] for i in src if i in old]
        if len(parts) == len(src):
            new[g] = {k: torch.cat([p[k].cpu() for p in parts], 0) if rows and _is_rows(v) else v
                      for k, v in parts[0].items()}  # fmt: skip
    groups = [dict(state["param_groups"][0], params=list(range(len(mapping))))]
    return {"state": new, "param_groups": groups}


def optimizer_state_to_towers(state: dict[str, Any], norm: str) -> dict[str, Any]:
    """The grouped form -> a TowerAlexNet's optimizer state_dict (the inverse of ``optimizer_state_to_grouped``)."""
    mapping, old = _mapping(norm), state["state"]
    new: dict[int, Any] = {}
    for g, (dst, rows) in enumerate(mapping):
        if g not in old:
            continue
        for half, i in enumerate(dst):
            new[i] = {k: v.chunk(2, 0)[half].clone() if rows and _is_rows(v) else v for k, v in old[g].items()}
    groups = [dict(state["param_groups"][0], params=list(range(sum(len(d) for d, _ in mapping))))]
    return {"state": new, "param_groups": groups}


def is_tower_form(state: dict[str, Any], norm: str) -> bool:
    return len(state["param_groups"][0]["params"]) == len(_tower_names(norm))
