"""Training-step images/s on synthetic batches: ours vs torchvision's AlexNet, fp32 eager, plain loop.

    python benchmarks/train_step.py [--batch 64] [--iters 5] [--rounds 3] [--device cpu] [--only steps|allocator]

Baseline (same invocation): torchvision.models.alexnet, fp32, NCHW, torch.optim.SGD defaults, in a process
as a user's own loop runs it. Ours on the compute path `auto` picks for this device (tuning.py: bf16 autocast
where the device has it natively, else fp32; channels_last; fused SGD), with freed memory kept for reuse on
Linux CPUs (tuning.keep_freed_memory), as `alexnet train` runs it. The paper's network (alexnet) three ways:
with this package's LRN, with the previous LRN (nn.LocalResponseNorm on each tower, as 0.1 had it), and with
LRN replaced by the identity, so that LRN's share of the step is (t_with - t_without) / t_with.

The allocator setting is process-wide, so every measurement runs in a fresh process, and the measurements
take turns (--rounds rounds, each a median of --iters steps; the table shows the median round), so that load
from elsewhere falls on all of them alike. A paired row measures LRN's share once more with both nets in one
process, their steps alternating (run_pair): on a machine whose speed changes from minute to minute it is the
steadier figure. The second table runs torchvision's net and the paper net with and without the allocator
setting: the paper net should gain from it no more than torchvision's does, and no more than the same net
without its LRN (what the rest of the compute path gains). The setting is process-wide, so each net runs in two
processes at once, one with it and one without, in lock step: their steps alternate, each process sleeping while
the other steps (lockstep), so that a spell of load falls on both. Beside the speeds, a count the machine's
load does not move: minor page faults per step (memory the process gave back and took again, what the setting
saves); without the setting, an LRN that allocates no large temporaries adds no more than its own tensors take.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_peak, table, timeit  # noqa: E402

from alexnet import create_model
from alexnet.commands.summary import summarize  # noqa: E402
from alexnet.config import TrainConfig  # noqa: E402
from alexnet.engine import tuning  # noqa: E402
from alexnet.models.lrn import GroupedLRN  # noqa: E402

# job: (model name, LRN: ours/previous/identity, input size, our compute path, allocator setting kept)
JOBS = {
    "tv": ("tv", "", 224, False, False),
    "owt": ("alexnet_owt", "ours", 224, True, True),
    "paper": ("alexnet", "ours", 227, True, True),
    "previous": ("alexnet", "previous", 227, True, True),
    "identity": ("alexnet", "identity", 227, True, True),
    "tv_kept": ("tv", "", 224, False, True),
    "paper_unkept": ("alexnet", "ours", 227, True, False),
    "identity_unkept": ("alexnet", "identity", 227, True, False),
    "pair": ("alexnet", "ours and identity", 227, True, True),  # run_pair: both nets in one process, alternating
}
# the allocator table: per net its jobs without and with the setting, run in lock step (not in the rounds above)
ALLOCATOR = (("tv", "tv_kept"), ("paper_unkept", "paper"), ("identity_unkept", "identity"))
ROUNDS = [key for key in JOBS if key not in {"tv_kept", "paper_unkept", "identity_unkept"}]


class PreviousLRN(nn.Module):
    """0.1's per-tower LRN: nn.LocalResponseNorm (avg_pool3d over a padded 5-d view) on each half, then cat."""

    def __init__(self, m: GroupedLRN) -> None:
        super().__init__()
        self.groups, self.lrn = m.groups, nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(t) for t in x.chunk(self.groups, dim=1)], dim=1)


def swap_lrn(model: nn.Module, how: str) -> nn.Module:
    for name in ("norm1", "norm2"):
        m = getattr(model.features, name)
        setattr(model.features, name, PreviousLRN(m) if how == "previous" else nn.Identity())
    return model


def step_fn(model, opt, x, y, amp: bool, device: str):
    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def our_path(dev: torch.device) -> tuple[bool, bool, str]:
    path = tuning.resolve(TrainConfig(), dev)
    amp, cl = path.amp == "bf16", bool(path.channels_last)
    return amp, cl, f"{'bf16' if amp else 'fp32'}{' + channels_last' if cl else ''} + fused SGD"


def build_job(key: str, args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None], dict]:
    """Job ``key``'s training step, in this process (which takes the job's allocator setting), its device sync,
    and what a row reports beside the speed: GFLOP per image step (6 x MACs) and whether it ran in bf16."""
    import torchvision

    name, lrn, size, ours, kept = JOBS[key]
    dev = args.device
    if kept:
        tuning.keep_freed_memory(torch.device(dev))
    amp, cl, _ = our_path(torch.device(dev)) if ours else (False, False, "")
    torch.manual_seed(0)
    if name == "tv":
        model = torchvision.models.alexnet().to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        model = create_model(name, init="kaiming")
        model = (swap_lrn(model, lrn) if lrn != "ours" else model).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    x = torch.randn(args.batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    macs = summarize("alexnet_owt" if name == "tv" else name, size)["macs"]
    return step_fn(model, opt, x, y, amp, dev), sync, {"gflop": 6 * macs / 1e9, "amp": amp}


def run_job(key: str, args: argparse.Namespace) -> dict:
    """One measurement, in this process: images/s of the median of ``args.iters`` steps after 2 warm-up steps."""
    step, sync, meta = build_job(key, args)
    s = timeit(step, warmup=2, iters=args.iters, sync=sync)
    return {"ips": args.batch / s, "gflops": meta["gflop"] * args.batch / s, "amp": meta["amp"], "faults": faults(step)}


def serve_steps(key: str, args: argparse.Namespace) -> None:
    """A lock-step worker: builds job ``key``, then for each line on stdin runs one step ("step", answering its
    seconds) or counts page faults ("faults"), until stdin closes. Between requests it sleeps on the read."""
    step, sync, _ = build_job(key, args)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "faults":
            print(json.dumps(faults(step)), flush=True)
            continue
        t0 = time.perf_counter()
        step()
        sync()
        print(json.dumps(time.perf_counter() - t0), flush=True)


def lockstep(off: str, on: str, args: argparse.Namespace) -> dict:
    """Jobs ``off`` and ``on`` (one net without and with the allocator setting, which is process-wide) in two
    worker processes whose steps alternate, each process sleeping while the other steps: ``2 * args.iters``
    steps each after 2 warm-up steps, the first of the two changing every step. A spell of load from elsewhere
    falls on both alike, as in run_pair. Returns each one's images/s (of its median step) and page faults."""
    procs = {}
    for key in (off, on):
        cmd = [sys.executable, __file__, "--job", key, "--serve", "--batch", str(args.batch), "--device", args.device]
        procs[key] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(key: str, what: str):
        procs[key].stdin.write(what + "\n")
        procs[key].stdin.flush()
        return json.loads(procs[key].stdout.readline())

    try:
        for p in procs.values():
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a lock-step worker for {off}/{on} did not start")
        times: dict[str, list[float]] = {off: [], on: []}
        for i in range(2 + 2 * args.iters):
            for key in (off, on) if i % 2 == 0 else (on, off):
                t = ask(key, "step")
                if i >= 2:
                    times[key].append(t)
        return {
            key: {"ips": args.batch / statistics.median(t), "faults": ask(key, "faults")} for key, t in times.items()
        }
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()


def faults(step: Callable[[], None], steps: int = 2) -> float | None:
    """Minor page faults per step after the timed ones: pages the kernel had to hand the process afresh (memory
    returned to it and taken again), what the allocator setting saves. A count, not a time: the machine's load
    does not move it. None where the OS does not count them (no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def paper_steps(dev: torch.device, batch: int) -> dict[str, Callable[[], None]]:
    """The paper net's training step on our compute path (fused SGD, synthetic batch), with its LRN ("ours") and
    with LRN replaced by the identity ("identity"), built alike from the same seed."""
    amp, cl, _ = our_path(dev)
    steps = {}
    for how in ("ours", "identity"):
        torch.manual_seed(0)
        model = create_model("alexnet", init="kaiming")
        model = (model if how == "ours" else swap_lrn(model, how)).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
        x = torch.randn(batch, 3, 227, 227, device=dev)
        y = torch.randint(0, 1000, (batch,), device=dev)
        if cl:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        steps[how] = step_fn(model, opt, x, y, amp, dev.type)
    return steps


def run_pair(args: argparse.Namespace) -> dict:
    """LRN's share measured in one process: the paper net with its LRN and the same net with LRN removed, built
    alike (same seed, our compute path, freed memory kept), their steps alternating, ``2 * args.iters`` each
    after 2 warm-up steps; the median step of each. A spell of load from elsewhere falls on both nets' steps
    alike, which the fresh-process rows above cannot ensure (on a 2-core AVX2 EPYC a process's step time
    varied 2.0-4.2 s for the same net as other tenants came and went)."""
    dev = args.device
    tuning.keep_freed_memory(torch.device(dev))
    steps, times = list(paper_steps(torch.device(dev), args.batch).values()), {"with": [], "without": []}
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    for i in range(2 * (2 + 2 * args.iters)):
        t0 = time.perf_counter()
        steps[i % 2]()
        sync()
        if i >= 4:
            times["with" if i % 2 == 0 else "without"].append(time.perf_counter() - t0)
    return {key: statistics.median(t) for key, t in times.items()}


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Every job of ROUNDS in a fresh process, ``args.rounds`` times in turn; per job the round with the median
    img/s (``pair``: the round with the median share)."""
    runs: dict[str, list[dict]] = {key: [] for key in ROUNDS}
    for _ in range(args.rounds):
        for key in ROUNDS:
            cmd = [sys.executable, __file__, "--job", key, "--batch", str(args.batch), "--iters", str(args.iters),
                   "--device", args.device]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[key].append(json.loads(out.strip().splitlines()[-1]))
    share = lambda m: m["with"] / m["without"]  # noqa: E731
    return {key: sorted(r, key=share if key == "pair" else lambda m: m["ips"])[len(r) // 2] for key, r in runs.items()}


def measure_allocator(args: argparse.Namespace) -> list[dict]:
    """ALLOCATOR's pairs in lock step, ``args.rounds`` times; per pair the round with the median on/off ratio
    (and under "rounds" every round's ratio, in order)."""
    runs: list[list[dict]] = [[] for _ in ALLOCATOR]
    for _ in range(args.rounds):
        for i, (off, on) in enumerate(ALLOCATOR):
            m = lockstep(off, on, args)
            runs[i].append({"off": m[off], "on": m[on], "ratio": m[on]["ips"] / m[off]["ips"]})
    return [dict(sorted(r, key=lambda m: m["ratio"])[len(r) // 2], rounds=[m["ratio"] for m in r]) for r in runs]


def print_steps(args: argparse.Namespace) -> None:
    """The first table: every network's img/s against the baseline's, and LRN's share of the paper net's step."""
    amp, _, mode = our_path(torch.device(args.device))
    got = measure(args)
    peak16 = matmul_peak(torch.bfloat16, args.device) if amp else 0.0
    peak32 = matmul_peak(torch.float32, args.device)
    base = got["tv"]["ips"]
    labels = {"tv": "torchvision alexnet, fp32 eager (baseline)", "owt": f"ours alexnet_owt, {mode}",
              "paper": f"ours alexnet (paper, this LRN), {mode}", "previous": f"ours alexnet (paper, previous LRN), {mode}",
              "identity": f"ours alexnet (paper, LRN removed), {mode}"}  # fmt: skip
    rows = [["config", "img/s", "vs baseline", "GFLOP/s", "% of matmul peak"]]
    for key, label in labels.items():
        m = got[key]
        peak = peak16 if m["amp"] else peak32
        rows.append([label, f"{m['ips']:.1f}", f"{m['ips'] / base:.2f}x", f"{m['gflops']:.0f}",
                     f"{100 * m['gflops'] / peak:.0f} %"])  # fmt: skip
    print(f"device {args.device}, batch {args.batch}, threads {torch.get_num_threads()}, compute path {mode}, "
          f"{args.rounds} rounds of {args.iters} steps; freed memory kept for ours, not for the baseline; measured "
          f"matmul peak: fp32 {peak32:.0f} GFLOP/s" + (f", bf16 {peak16:.0f}" if amp else ""))  # fmt: skip
    print(table(rows))
    without = got["identity"]["ips"]
    for key in ("paper", "previous"):
        ips = got[key]["ips"]
        print(f"LRN share of the step, {labels[key].split('(')[1].split(')')[0]}: {100 * (1 - ips / without):.0f} %"
              f" ({1000 * args.batch / ips:.0f} ms vs {1000 * args.batch / without:.0f} ms without LRN)")  # fmt: skip
    pair = got["pair"]
    print(f"LRN share of the step, this LRN, the two nets' steps alternating in one process: "
          f"{100 * (1 - pair['without'] / pair['with']):.0f} % ({1000 * pair['with']:.0f} ms vs "
          f"{1000 * pair['without']:.0f} ms without LRN; medians of {2 * args.iters} steps each, median round)")  # fmt: skip
    print(f"paper net / alexnet_owt: {got['paper']['ips'] / got['owt']['ips']:.2f}")


def print_allocator(args: argparse.Namespace) -> None:
    """The second table: each net's speed and page faults without and with the allocator setting, in lock step."""
    mode = our_path(torch.device(args.device))[2]
    rows = [
        [
            "config",
            "img/s, setting off",
            "img/s, setting on",
            "on / off",
            "each round",
            "page faults per step, off / on",
        ]
    ]
    for label, m in zip(("torchvision alexnet, fp32 eager", f"ours alexnet (paper), {mode}",
                         f"ours alexnet (paper, LRN removed), {mode}"), measure_allocator(args)):  # fmt: skip
        fa, fb = m["off"]["faults"], m["on"]["faults"]
        counted = "not counted here" if fa is None or fb is None else f"{fa:,.0f} / {fb:,.0f}"
        rounds = ", ".join(f"{r:.2f}" for r in m["rounds"])
        rows.append([label, f"{m['off']['ips']:.1f}", f"{m['on']['ips']:.1f}", f"{m['ratio']:.2f}x", rounds, counted])
    print(f"the allocator setting (tuning.keep_freed_memory), off vs on, device {args.device}, batch {args.batch}: per "
          f"net the two in lock step (two processes whose steps alternate), medians of {2 * args.iters} steps each, "
          f"the median of {args.rounds} rounds:")  # fmt: skip
    print(table(rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", choices=("steps", "allocator"), help="one of the two tables")
    ap.add_argument("--job", choices=list(JOBS), help=argparse.SUPPRESS)  # one measurement (a worker process)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # --job as a lock-step worker
    args = ap.parse_args()
    if args.serve:
        serve_steps(args.job, args)
    elif args.job:
        print(json.dumps(run_pair(args) if args.job == "pair" else run_job(args.job, args)))
    else:
        if args.only != "allocator":
            print_steps(args)
        if args.only is None:
            print()
        if args.only != "steps":
            print_allocator(args)


if __name__ == "__main__":
    main()
