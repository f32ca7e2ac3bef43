"""Hybrid parallelism under torchrun: the convolutions data-parallel (DDP), fc6 and fc7 model-parallel.

Krizhevsky, "One weird trick for parallelizing convolutional neural networks" (2014). AlexNet's convolutions hold
about 4 % of its parameters and 90 % of its arithmetic; fc6-fc8 hold the rest of the parameters. Plain DDP
all-reduces every gradient every step (244 MB of fp32 for 61 M parameters). Here the ranks exchange activations
instead, for rank r of W with a local batch of b (global batch B = W b):

    pool5 (b, 9216)  --all-gather-->  (B, 9216)          every rank sees the whole global batch
    fc6 rows [lo_r, hi_r) (column-parallel)  -> (B, n_r)  relu, dropout on this rank's units (keyed per sample)
    fc7 columns [lo_r, hi_r) (row-parallel)  -> (B, 4096) partial sums
                     --reduce-scatter-->  (b, 4096)       this rank's own images, summed over ranks, + fc7's bias
    relu, dropout, fc8 (replicated)          -> (b, classes), the loss on the local batch as under DDP

The backward of an all-gather is a reduce-scatter and the reverse, so gradients flow back through the same two
collectives (their own process group, apart from DDP's). Replicated parameters (convolutions, fc7's bias, fc8)
are averaged by DDP; the fc6/fc7 shards saw every image, and their gradients are sums of the W local losses'
gradients, so they are divided by W to equal DDP's average. fc8 stays replicated: its gradient (16 MB at 1000
classes) costs at most 2 x 16 MB of wire traffic per step at any world size, where sharding it by class would add
(W-1) x 8 x (4096 + classes) bytes per image of the local batch (fc7's output and the logits, both ways): less
only while the global batch is below ~800 images (benchmarks/parallel.py prints both), and it would need a
softmax across ranks.

Checkpoints keep the single-model form: ``state_dict()`` gathers the shards, ``load_state_dict()`` slices them,
and the optimizer state is converted the same way, so a hybrid run resumes as DDP or as one process and back.
Shards may be uneven (any world size). Written as torch.distributed collectives inside autograd Functions rather
than DTensor/tensor-parallel: two layers and four collectives whose every byte is visible and counted, plain
parameters that the fused optimizers and the checkpoint code already handle, and one code path on Gloo and NCCL.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..models.alexnet import AlexNet
from ..models.layers import KeyedDropout, Network, check_input_size, keyed_dropout, pool_to_grid
from ..models.owt import AlexNetOWT


@dataclass
class CommLog:
    """Bytes of the tensors handed to each kind of collective (their inputs), while ``enabled``."""

    enabled: bool = False
    bytes: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, t: torch.Tensor) -> None:
        if self.enabled:
            self.bytes[kind] = self.bytes.get(kind, 0) + t.numel() * t.element_size()


COMM = CommLog()  # hybrid's activation collectives; DDP's gradient buckets are counted by a comm hook
# torch 2.14 has new names for the two tensor collectives and warns on the old ones (FutureWarning); a torch
# without the new names takes the old
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s units ``[lo, hi)`` of ``n``: contiguous, sizes differing by at most one."""
    return n * rank // world, n * (rank + 1) // world


def gather_rows(x: torch.Tensor, group: Any, kind: str = "all_gather") -> torch.Tensor:
    """(b, ...) on every rank -> (W b, ...) on every rank, in rank order."""
    out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
    COMM.add(kind, x)
    _all_gather(out, x.contiguous(), group=group)
    return out


def reduce_scatter_rows(x: torch.Tensor, group: Any) -> torch.Tensor:
    """(W b, ...) on every rank -> this rank's (b, ...) rows, summed over the ranks."""
    out = x.new_empty((x.shape[0] // dist.get_world_size(group), *x.shape[1:]))
    COMM.add("reduce_scatter", x)
    _reduce_scatter(out, x.contiguous(), group=group)
    return out


class _Exchange(torch.autograd.Function):
    """An activation exchange whose backward is its dual: all-gather forward, reduce-scatter backward, and the
    reverse."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, fwd: Any, bwd: Any) -> torch.Tensor:
        ctx.group, ctx.bwd = group, bwd
        return fwd(x, group)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return ctx.bwd(g, ctx.group), None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` (a shard's sum over W losses -> DDP's mean)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g * ctx.scale, None


class ColumnShard(nn.Module):
    """fc6 on one rank: output units ``[lo, hi)`` (rows of the weight and the bias)."""

    def __init__(self, full: nn.Linear, lo: int, hi: int, world: int) -> None:
        super().__init__()
        self.lo, self.hi, self.scale = lo, hi, 1.0 / world
        self.weight = nn.Parameter(full.weight.detach()[lo:hi].clone(), full.weight.requires_grad)
        self.bias = nn.Parameter(full.bias.detach()[lo:hi].clone(), full.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _ScaleGrad.apply(self.weight, self.scale), _ScaleGrad.apply(self.bias, self.scale))


class RowShard(nn.Module):
    """fc7 on one rank: input units ``[lo, hi)`` (columns of the weight); the bias is replicated and added
    after the reduce-scatter."""

    def __init__(self, full: nn.Linear, lo: int, hi: int, world: int) -> None:
        super().__init__()
        self.lo, self.hi, self.scale = lo, hi, 1.0 / world
        self.weight = nn.Parameter(full.weight.detach()[:, lo:hi].clone(), full.weight.requires_grad)
        self.bias = nn.Parameter(full.bias.detach().clone(), full.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, hi - lo) -> (B, out) partial sums, no bias
        return F.linear(x, _ScaleGrad.apply(self.weight, self.scale))


@dataclass(frozen=True)
class Shard:
    """A sharded parameter: its dimension, this rank's ``[lo, hi)`` along it, and the full size."""

    dim: int
    lo: int
    hi: int
    size: int


class HybridAlexNet(Network):
    """An AlexNet variant (``features``, ``avgpool``, a classifier with three Linear layers) with fc6 and fc7
    sharded over the ranks of ``group``. Parameter names and order are the single model's."""

    def __init__(self, model: nn.Module, group: Any = None) -> None:
        super().__init__()
        if not isinstance(model, AlexNet | AlexNetOWT):
            raise ValueError(f"hybrid parallelism needs an AlexNet variant, not {type(model).__name__}")
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.num_classes, self.min_input_size = model.num_classes, model.min_input_size
        self.norm = getattr(model, "norm", None)  # lrn | bn for the two-tower variants (checkpoint conversions)
        self.features, self.avgpool, self.classifier = model.features, model.avgpool, model.classifier
        children = list(self.classifier.named_children())
        fcs = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
        if len(fcs) != 3:
            raise ValueError(f"hybrid parallelism needs a classifier with three Linear layers, found {len(fcs)}")
        i6, i7, i8 = fcs
        self.names = (children[i6][0], children[i7][0], children[i8][0])
        fc6, fc7 = children[i6][1], children[i7][1]
        assert isinstance(fc6, nn.Linear) and isinstance(fc7, nn.Linear)
        lo, hi = shard_range(fc6.out_features, self.rank, self.world)  # fc7 reads what fc6 wrote: same range
        setattr(self.classifier, self.names[0], ColumnShard(fc6, lo, hi, self.world))
        setattr(self.classifier, self.names[1], RowShard(fc7, lo, hi, self.world))
        mods = [m for _, m in self.classifier.named_children()]
        self._pre, self._mid, self._post = mods[:i6], mods[i6 + 1 : i7], mods[i7 + 1 : i8]  # not registered twice
        n6 = fc6.out_features
        self.shards = {f"classifier.{self.names[0]}.weight": Shard(0, lo, hi, n6),
                       f"classifier.{self.names[0]}.bias": Shard(0, lo, hi, n6),
                       f"classifier.{self.names[1]}.weight": Shard(1, lo, hi, n6)}  # fmt: skip

    def num_params(self) -> int:
        """The whole network's parameter count (this rank holds the replicated ones and its shards)."""
        return sum(p.numel() for n, p in self.named_parameters() if n not in self.shards) + sum(
            s.size * self.get_parameter(n).numel() // (s.hi - s.lo) for n, s in self.shards.items()
        )

    def _fc(self, i: int) -> nn.Module:
        return self.classifier.get_submodule(self.names[i])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, "alexnet (hybrid)")
        return pool_to_grid(self.features(x), self.avgpool)  # (b, 256, 6, 6)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = torch.flatten(x, 1)  # (b, 9216)
        for m in self._pre:  # alexnet_owt's dropout on fc6's input: local rows, local keys
            h = m(h)
        keys = self._global_keys()
        h = _Exchange.apply(h, self.group, gather_rows, reduce_scatter_rows)  # (B, 9216)
        fc6 = self._fc(0)
        assert isinstance(fc6, ColumnShard)
        h = fc6(h)  # (B, n_r)
        for m in self._mid:  # relu6, drop6 on this rank's units of the whole global batch
            h = keyed_dropout(h, m.p, keys, m.stream, m.offset + fc6.lo) if _keyed(m) and keys is not None else m(h)
        p = self._fc(1)(h)  # (B, 4096): this rank's share of every image's fc7 input
        h = _Exchange.apply(p.float(), self.group, reduce_scatter_rows, gather_rows)  # (b, 4096): summed in fp32
        h = h.to(p.dtype) + self._fc(1).bias
        for m in self._post:
            h = m(h)
        return h if pre_logits else self._fc(2)(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _global_keys(self) -> torch.Tensor | None:
        """The whole global batch's dropout keys, when a keyed dropout acts on the sharded units this step."""
        for m in self._mid:
            if _keyed(m) and m.keys is not None:
                return gather_rows(m.keys, self.group, "all_gather_keys")
        return None

    # --- the single-model form, both ways ----------------------------------------------------------------

    def state_dict(self, *args: Any, **kwargs: Any) -> OrderedDict[str, torch.Tensor]:  # type: ignore[override]
        """The single model's state_dict (a collective: every rank calls it)."""
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for name, s in self.shards.items():
            sd[prefix + name] = gather_dim(sd[prefix + name], s, self.group)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        sd = dict(state_dict)
        for name, s in self.shards.items():
            if name in sd:
                if sd[name].shape[s.dim] != s.size:
                    raise RuntimeError(f"{name}: expected {s.size} along dim {s.dim}, got {tuple(sd[name].shape)}")
                sd[name] = sd[name].narrow(s.dim, s.lo, s.hi - s.lo)
        return super().load_state_dict(sd, strict=strict, assign=assign)

    def ddp(self, device_ids: list[int] | None) -> DDP:
        """DDP over the replicated parameters only (the shards are each rank's own)."""
        DDP._set_params_and_buffers_to_ignore_for_model(self, list(self.shards))
        return DDP(self, device_ids=device_ids)


def grad_scaler(device_type: str, enabled: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler for a hybrid run: a step is skipped on every rank when any rank's gradients overflow.
    Each rank's fc6/fc7 shard has gradients no other rank sees, so with a plain GradScaler a rank whose shard
    overflowed skipped a step its peers took, and the replicated layers' copies parted (measured on 2 Gloo
    processes: conv1 differed by 7.9e-5 after one such step, the loss scales by 2x). PyTorch's sharded
    scaler all-reduces the overflow flag over the ranks before the step; its state is GradScaler's, so a
    checkpoint resumes with or without hybrid."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device_type, enabled=enabled, process_group=dist.group.WORLD)


def _keyed(m: nn.Module) -> TypeGuard[KeyedDropout]:
    return isinstance(m, KeyedDropout) and m.training and m.p > 0


def gather_dim(t: torch.Tensor, s: Shard, group: Any) -> torch.Tensor:
    """Every rank's shard of a tensor along ``s.dim``, concatenated (uneven shards padded for the collective)."""
    w = dist.get_world_size(group)
    sizes = [hi - lo for lo, hi in (shard_range(s.size, r, w) for r in range(w))]
    m = max(sizes)
    x = t.detach().movedim(s.dim, 0)
    if x.shape[0] < m:
        x = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
    out = x.new_empty((w * m, *x.shape[1:]))
    _all_gather(out, x.contiguous(), group=group)
    return torch.cat([out[r * m : r * m + n] for r, n in enumerate(sizes)]).movedim(0, s.dim).contiguous()


def _trainable_shards(model: HybridAlexNet) -> dict[int, Shard]:
    """Optimizer index (build_optimizer's order: trainable parameters) -> the shard it holds."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {i: model.shards[n] for i, n in enumerate(names) if n in model.shards}


def optimizer_state_full(model: HybridAlexNet, state: dict[str, Any]) -> dict[str, Any]:
    """This rank's optimizer state_dict -> the single model's (a collective: every rank calls it)."""
    new = {i: dict(v) for i, v in state["state"].items()}
    for i, s in _trainable_shards(model).items():
        for k, v in sorted(new.get(i, {}).items()):
            if torch.is_tensor(v) and v.dim() > 0:  # param-shaped (momentum, Adam moments); not 'step'
                new[i][k] = gather_dim(v, s, model.group)
    return {"state": new, "param_groups": state["param_groups"]}


def optimizer_state_shard(model: HybridAlexNet, state: dict[str, Any]) -> dict[str, Any]:
    """The single model's optimizer state_dict -> this rank's (the inverse of ``optimizer_state_full``)."""
    new = {i: dict(v) for i, v in state["state"].items()}
    for i, s in _trainable_shards(model).items():
        for k, v in new.get(i, {}).items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape[s.dim] == s.size:
                new[i][k] = v.narrow(s.dim, s.lo, s.hi - s.lo).clone()
    return {"state": new, "param_groups": state["param_groups"]}


def assemble(model: HybridAlexNet, into: nn.Module) -> nn.Module:
    """Load the whole network into a plain single model (``into``), e.g. to validate (a collective)."""
    into.load_state_dict(model.state_dict())
    return into
