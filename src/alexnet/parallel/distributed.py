"""Process-group setup from torchrun's environment, in one place.

``torchrun --nproc_per_node=N -m alexnet train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
a plain ``alexnet train`` has none of them and runs the same code with world size 1 and no
process group. NCCL on CUDA, Gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} requested but no CUDA GPU is available (use --device cpu or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name}: this machine's CUDA GPUs are cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps requested but MPS is not available")
    return dev


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number; torchrun sets it, or unset it to run one "
                        "process") from None  # fmt: skip


def launch_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) as the launcher (torchrun) set them, checked: a variable left over in the
    shell (RANK without WORLD_SIZE once made a run that trained, wrote nothing and exited 0) is one error."""
    world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1:
        raise UserError(f"WORLD_SIZE={world}: the number of processes must be at least 1")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} with WORLD_SIZE={world} (ranks are 0 to {world - 1})"
                        + ("; a torchrun launch sets both: unset RANK to run one process" if world == 1 else ""))  # fmt: skip
    if local_rank < 0:
        raise UserError(f"LOCAL_RANK={local_rank} must be 0 or more")
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise UserError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start the processes with "
                            "torchrun (it sets them), or unset WORLD_SIZE to run one")  # fmt: skip
    return world, rank, local_rank


def launch_rank() -> int:
    """This process's global rank as its launcher (torchrun) set it; 0 when started on its own. Readable before
    the process group exists (logging, the run directory)."""
    return launch_env()[1]


def setup(device: str = "auto") -> DistInfo:
    world, rank, local_rank = launch_env()
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, local_rank, world, dev)


def new_group() -> dist.ProcessGroup:
    """A second group over all ranks (same backend), for collectives that must not queue behind DDP's buckets."""
    group = dist.new_group()  # (typed to allow NON_GROUP_MEMBER, which a group over all ranks never gives)
    return cast(dist.ProcessGroup, group)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def agree_stop(bad_step: int, signal: int | None, device: torch.device) -> tuple[int, int | None]:
    """(first non-finite step, signal) as every rank must see them: the max over ranks (one all-reduce on
    ``device`` and one read; nothing in one process). Called at the same steps on all ranks, so a NaN or a
    SIGTERM on one rank stops them all together."""
    if not dist.is_initialized():
        return bad_step, signal
    bad, sig = all_reduce_max(torch.tensor([bad_step, signal or 0], device=device)).tolist()
    return bad, sig or None


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (timing it): CUDA, MPS and any other accelerator; nothing on CPUs.
    ``torch.accelerator`` (PyTorch 2.6+) where torch has it, else per backend."""
    if device.type == "cpu":
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        accelerator.synchronize(device)
    elif device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """The sum over all ranks, whose gradient is the sum of the ranks' gradients: as functional collectives, which
    torch.compile traces into the graph (torch.distributed.nn.functional.all_reduce breaks the graph there)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(g)


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed import _functional_collectives as fc

    world = dist.group.WORLD  # (None only before init_process_group; GlobalBatchNorm2d checks that first)
    return fc.wait_tensor(fc.all_reduce(x.contiguous(), "sum", cast(dist.ProcessGroup, world)))


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over the global batch (every rank's images), so 1 and N
    processes train the same network. Two all-reduces per forward (mean, then centred squares: as stable as
    the one-process two-pass variance) through autograd-aware collectives, so the backward all-reduces too.
    Works on Gloo (CPU) and NCCL alike (PyTorch's SyncBatchNorm is GPU-only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        xf, shape = x.float(), (1, -1, 1, 1)
        # every rank holds an equal share of the global batch (epoch_indices pads to a multiple of the world
        # size): the count needs no collective and no host sync
        n = float(x.numel() // x.shape[1] * dist.get_world_size())
        mean = all_reduce(xf.sum((0, 2, 3))) / n
        var = all_reduce((xf - mean.view(shape)).square().sum((0, 2, 3))) / n
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        count, run_mean, run_var = self.num_batches_tracked, self.running_mean, self.running_var
        if count is not None and run_mean is not None and run_var is not None:  # (None: track_running_stats=False)
            with torch.no_grad():
                count.add_(1)  # momentum None: a cumulative average (engine/precise_bn.py)
                m = self.momentum if self.momentum is not None else 1.0 / float(count)
                run_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                run_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return y.to(x.dtype)


def global_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every BatchNorm2d for a GlobalBatchNorm2d holding the same parameters and buffers (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.BatchNorm2d:
                g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)  # fmt: skip
                g.weight, g.bias = child.weight, child.bias
                g.running_mean, g.running_var = child.running_mean, child.running_var
                g.num_batches_tracked = child.num_batches_tracked
                setattr(parent, name, g)
    return model
