"""Bytes communicated per step, DDP vs hybrid (convolutions DDP, fc6/fc7 sharded; src/alexnet/parallel/hybrid.py), and
step time on 2 Gloo processes.

    python benchmarks/parallel.py                       # formula table + 2-process measurement
    python benchmarks/parallel.py --batches 128 --size 227 --steps 3

Bytes are counted from the tensors handed to the collectives: DDP's gradient buckets through a comm hook, hybrid's
activation exchanges through ``hybrid.COMM``; the formula is printed beside them. Wire traffic per rank uses the
ring algorithms' volumes (all-reduce of N bytes sends 2 (W-1)/W N; an all-gather producing W n sends (W-1) n; a
reduce-scatter of N sends (W-1)/W N). The pool5 size (9216) does not depend on the input size, so the byte counts
are measured on small images; step times are for the size given.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

F6_IN, F6_OUT = 9216, 4096  # pool5 width, fc6/fc7 width
MB = 1e6


def param_counts(classes: int = 1000) -> tuple[int, int]:
    """(all parameters, the sharded ones: fc6 weight+bias and fc7 weight) of the paper's alexnet."""
    from alexnet import create_model

    with torch.device("meta"):
        m = create_model("alexnet", classes)
    total = sum(p.numel() for p in m.parameters())
    return total, F6_IN * F6_OUT + F6_OUT + F6_OUT * F6_OUT


def formula(b: int, world: int, classes: int = 1000) -> dict[str, float]:
    """Per step and rank, fp32: bytes handed to collectives and ring wire bytes sent, for DDP and hybrid."""
    p_all, p_shard = param_counts(classes)
    w, act = world, b * (F6_IN + F6_OUT)
    ring_ar = 2 * (w - 1) / w
    return {
        "ddp_handed": 4 * p_all,
        "ddp_wire": ring_ar * 4 * p_all,
        # all-gather pool5 and fc7-output grads (b rows in), reduce-scatter fc7 partials and pool5 grads (W b rows in)
        "hybrid_handed": 4 * act * (1 + w) + 8 * b + 4 * (p_all - p_shard),
        # each rank sends (W-1)/W of every reduce-scatter input and (W-1) times its all-gather input
        "hybrid_wire": (w - 1) * (8 * act + 8 * b) + ring_ar * 4 * (p_all - p_shard),
    }


def fc8_wire(b: int, world: int, classes: int = 1000) -> tuple[float, float]:
    """fc8's share of the wire bytes per step and rank: replicated (ring all-reduce of its gradient) or sharded
    by class (two more activation exchanges of b x 4096 and two of b x classes, each sending (W-1) x its input)."""
    w = world
    return 2 * (w - 1) / w * 4 * (F6_OUT + 1) * classes, (w - 1) * 4 * b * 2 * (F6_OUT + classes)


def crossover(classes: int = 1000) -> float:
    """The global batch W b where both send the same wire bytes: (W-1) 8 b 13312 = 2 (W-1)/W 4 p_shard."""
    _, p_shard = param_counts(classes)
    return p_shard / (F6_IN + F6_OUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counting_hook(counter: dict[str, int]):  # noqa: ANN202
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def hook(state, bucket):  # noqa: ANN001, ANN202  (DDP checks the annotations as objects; none is fine)
        counter["all_reduce"] = counter.get("all_reduce", 0) + bucket.buffer().numel() * bucket.buffer().element_size()
        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

    return hook


def _run(mode: str, b: int, size: int, steps: int) -> dict[str, float]:
    """``steps`` timed SGD steps (after one warm-up) of alexnet (1000 classes) on this rank; bytes per step."""
    from alexnet import create_model
    from alexnet.parallel.hybrid import COMM, HybridAlexNet

    torch.manual_seed(0)
    model = create_model("alexnet", 1000)
    ddp_bytes: dict[str, int] = {}
    if mode == "hybrid":
        model = HybridAlexNet(model, dist.new_group())
        wrapped = model.ddp(None)
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    wrapped.register_comm_hook(None, _counting_hook(ddp_bytes))
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x, y = torch.randn(b, 3, size, size), torch.randint(0, 1000, (b,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(wrapped(x), y).backward()
        opt.step()

    step()
    ddp_bytes.clear()
    COMM.bytes, COMM.enabled = {}, True
    dist.barrier()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    seconds = (time.perf_counter() - t) / steps
    COMM.enabled = False
    handed = (sum(ddp_bytes.values()) + sum(COMM.bytes.values())) / steps
    return {"seconds": seconds, "handed": handed, "ddp_part": sum(ddp_bytes.values()) / steps}


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        res = {}
        for b in args.batches:
            for mode in ("ddp", "hybrid"):
                res[f"{mode} {b}"] = _run(mode, b, args.size, args.steps)
        if rank == 0:
            Path(out).write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64], help="per-rank batches measured")
    ap.add_argument(
        "--size", type=int, default=67, help="input side for the measured steps (bytes do not depend on it)"
    )
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    print("per step and rank, fp32, alexnet at 1000 classes (formula):")
    rows = [["world", "batch/rank", "global", "DDP handed MB", "hybrid handed MB", "DDP wire MB", "hybrid wire MB",
             "fewer bytes"]]  # fmt: skip
    for w in (2, 8, 64):
        for b in (128, 256, 512):
            f = formula(b, w)
            rows.append([str(w), str(b), str(w * b), f"{f['ddp_handed'] / MB:.0f}", f"{f['hybrid_handed'] / MB:.0f}",
                         f"{f['ddp_wire'] / MB:.0f}", f"{f['hybrid_wire'] / MB:.0f}",
                         "hybrid" if f["hybrid_wire"] < f["ddp_wire"] else "DDP"])  # fmt: skip
    print(table(rows))
    print(f"crossover: hybrid sends fewer bytes while the global batch is below {crossover():.0f} images, any world")
    print(
        "\nfc8 (4096 x 1000) in hybrid, wire MB per step and rank: replicated (its gradient in DDP's all-reduce) vs "
        "sharded by class (fc7's output all-gathered and its gradient reduce-scattered, logits gathered and their "
        "gradient scattered)"
    )
    rows = [["world", "batch/rank", "replicated", "sharded", "keep"]]
    for w in (2, 8, 64):
        for b in (32, 128, 512):
            rep, shard = fc8_wire(b, w)
            rows.append(
                [str(w), str(b), f"{rep / MB:.1f}", f"{shard / MB:.1f}", "replicated" if rep <= shard else "sharded"]
            )
    print(table(rows))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "res.json")
        torch.multiprocessing.spawn(_worker, args=(_free_port(), args, out), nprocs=2)
        res = json.loads(Path(out).read_text())
    print(f"\nmeasured: 2 Gloo processes on this machine, {args.size}x{args.size} inputs, {args.steps} steps after one")
    rows = [["mode", "batch/rank", "handed MB (measured)", "handed MB (formula)", "s/step", "vs DDP"]]
    for b in args.batches:
        f = formula(b, 2)
        for mode in ("ddp", "hybrid"):
            r = res[f"{mode} {b}"]
            rows.append([mode, str(b), f"{r['handed'] / MB:.1f}", f"{f[mode + '_handed'] / MB:.1f}",
                         f"{r['seconds']:.3f}", f"{res[f'ddp {b}']['seconds'] / r['seconds']:.2f}x"])  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
