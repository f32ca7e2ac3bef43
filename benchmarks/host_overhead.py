"""The training loop's host path at ImageNet scale: what the engine does around each step besides the step.

    python benchmarks/host_overhead.py [--steps 200] [--worlds 1 8 64] [--batches 128 256] [--profile]

One rank of a run on ImageNet's 1,281,167 training samples at world size W (rank 0 simulated: the other ranks'
collectives are no-ops without a process group), per-rank batch B, the `fast` recipe's loop (onecycle lr per
step, label smoothing, PCA colour noise, flips) with train.sync_every=20 (the GPU default): the network is a
trivial module (a 1x1 convolution, global pooling and a linear layer) and the images tiny (3 x 8 x 8 uint8, the
same one for every sample), so what remains is host work: the sampler and the epoch's order, batch indices, the
augmentation's parameters (keyed per sample), the sums, the sync steps' checks and logging, the budget's clock.
The augmentation is `modern` with the crop done by the loader (as from a folder), so its ops are the GPU path's
(no CPU per-image loop). Baseline, same run: a bare loop of the same module's forward, backward and optimizer
step on pre-built batches. Printed per configuration:

    host overhead: X ms per step, ratio R (world W, batch B)

where R is the engine's seconds per step over the bare loop's, both the median of eleven interleaved rounds. Also
printed: the ATen ops dispatched per step by each (a count, free of the machine's noise: on a GPU each is a
launch), and what building the epoch's order and taking its augmentation's draws cost (once per epoch, on a thread;
before, ``len()`` of the batches built the order, up to six times a step on GPUs, and each step hashed its keys).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet.config import apply_overrides, load_recipe
from alexnet.data.batches import Batches, TensorSource, epoch_indices
from alexnet.data.loaders import DataBundle
from alexnet.data.preprocess import Preprocess
from alexnet.data.stats import ColourStats
from alexnet.data.transforms import BatchAugment, epoch_draws
from alexnet.engine.budget import BudgetRun
from alexnet.engine.epoch import train_one_epoch
from alexnet.engine.optim import Schedule, build_optimizer
from alexnet.engine.runlog import RunLogger
from alexnet.engine.setup import Session, resolve_config
from alexnet.engine.signals import StopFlag
from alexnet.engine.state import RunInfo, TrainState
from alexnet.parallel.distributed import DistInfo, synchronize

N_IMAGENET, CLASSES, SIDE = 1_281_167, 1000, 8


class Trivial(nn.Module):
    """As little computation as a network can be: 3 -> 16 channels, pooled, 16 -> 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 1), nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def engine_for(world: int, batch: int, run_dir: Path, dev: torch.device) -> tuple[Session, TrainState]:
    """A `fast`-recipe Session and TrainState over the ImageNet-sized source, built as engine/setup.py builds them
    but around the trivial module (setup() itself would build an AlexNet)."""
    sets = ["data.res_start=null", "data.res_end=null", "train.amp=none",
            "train.channels_last=false", "train.compile=false", f"train.batch_size={batch * world}", "train.epochs=1000",
            "train.sync_every=20", "train.log_every=20", "train.bn_recalibrate=0"]  # fmt: skip
    cfg = apply_overrides(load_recipe("fast"), sets)
    cfg.data.crop = cfg.data.resize = SIDE  # below any AlexNet's minimum input: set past the config's check
    cfg = resolve_config(cfg, dev)
    cfg.train.channels_last = False
    labels = torch.arange(N_IMAGENET) % CLASSES
    images = torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8).expand(N_IMAGENET, -1, -1, -1)
    train = Batches(TensorSource(images, labels), batch, True, cfg.train.seed, 0, world, pin_memory=dev.type == "cuda",
                    draws=epoch_draws)  # fmt: skip
    stats = ColourStats.imagenet()
    pre = Preprocess(SIDE, SIDE, tuple(stats.mean), tuple(stats.std))
    normalizer = pre.normalizer(stats)
    augment = BatchAugment("modern", SIDE, normalizer.to(dev), cfg.data.pca_noise, pre_cropped=True)
    names = [f"class_{i}" for i in range(CLASSES)]
    data = DataBundle(train, train, names, pre, normalizer, augment, stats, [], "", None)
    model = Trivial().to(dev)
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.lr)
    schedule = Schedule(optimizer, cfg.schedule, cfg.optim.lr, cfg.train.epochs, len(train))
    st = TrainState(model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False),
                    RunInfo(cfg, names, pre, world, ""))  # fmt: skip
    dist = DistInfo(0, 0, world, dev)
    return Session(cfg, dist, run_dir, data, model, model, augment, RunLogger(None), False), st


def engine_rounds(s: Session, st: TrainState, steps: int, rounds: int) -> list[float]:
    """Seconds per step of ``train_one_epoch`` over ``steps`` steps, ``rounds`` times (after 20 warm-up steps),
    with a --budget clock taking the sync steps' times as a budget run's does. An epoch that ends moves to the
    next (a new order drawn) without the validation and checkpoint of a real epoch's end."""
    clock = BudgetRun(None, time.monotonic(), None, None)  # type: ignore[arg-type]

    def train_to(target: int) -> None:
        while st.global_step < target:
            train_one_epoch(s, st, stop, target, clock.tick)
            if st.step_in_epoch >= len(s.data.train):
                st.epoch, st.step_in_epoch = st.epoch + 1, 0

    out = []
    with StopFlag() as stop:
        train_to(st.global_step + 20)
        for _ in range(rounds):
            t0, start = time.perf_counter(), st.global_step
            train_to(start + steps)
            synchronize(s.device)
            out.append((time.perf_counter() - t0) / steps)
    return out


def bare_rounds(batch: int, steps: int, rounds: int, dev: torch.device) -> list[float]:
    """The baseline: the trivial module's forward, backward and optimizer step (the same fused SGD) on batches
    built beforehand, already normalised."""
    cfg = load_recipe("fast")
    model = Trivial().to(dev)
    optimizer = build_optimizer(model, cfg.optim, cfg.optim.lr)
    xs = [torch.randn(batch, 3, SIDE, SIDE, device=dev) for _ in range(8)]
    ys = [torch.randint(0, CLASSES, (batch,), device=dev) for _ in range(8)]

    def step(i: int) -> None:
        loss = F.cross_entropy(model(xs[i % 8]), ys[i % 8], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(20):
        step(i)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        synchronize(dev)
        out.append((time.perf_counter() - t0) / steps)
    return out


class OpCount(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it (every op a GPU would launch, views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(s: Session, st: TrainState, batch: int, dev: torch.device, steps: int = 40) -> tuple[float, float]:
    """(engine, bare loop): ATen ops per step, counted over ``steps`` steps and their 20 warm-up steps each."""
    with OpCount() as engine:
        engine_rounds(s, st, steps, 1)
    with OpCount() as bare:
        bare_rounds(batch, steps, 1, dev)
    return engine.ops / (steps + 20), bare.ops / (steps + 20)


def order_ms(world: int) -> tuple[float, float]:
    """Milliseconds to draw one epoch's order of ImageNet for one rank, and to take its augmentation's draws (both
    once per epoch, on a thread while the epoch before trains)."""
    t0 = time.perf_counter()
    order = epoch_indices(N_IMAGENET, 0, 0, 0, world, True)
    t1 = time.perf_counter()
    epoch_draws(0, 0, order)
    return 1000 * (t1 - t0), 1000 * (time.perf_counter() - t1)


def profile(world: int, batch: int, steps: int, dev: torch.device, top: int = 12) -> None:
    """The functions the engine's steps spend their own time in (cProfile's tottime), in ms per step."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        s, st = engine_for(world, batch, Path(tmp), dev)
        engine_rounds(s, st, steps, 1)
        prof = cProfile.Profile()
        prof.enable()
        engine_rounds(s, st, steps, 1)
        prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = sorted(((tt, f"{Path(f).name}:{line}({name})") for (f, line, name), (_, _, tt, _, _) in stats.items()),
                  reverse=True)  # fmt: skip
    total = sum(tt for tt, _ in rows)
    print(f"cProfile, world {world}, batch {batch}, {steps + 20} steps: {1000 * total / (steps + 20):.2f} ms per step "
          "in all (the profiler's own cost included); own time per step of the top functions:")  # fmt: skip
    for tt, where in rows[:top]:
        print(f"  {1000 * tt / (steps + 20):6.3f} ms  {where}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="steps per timed round (default 200)")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256], help="per-rank batch sizes")
    ap.add_argument("--device", default="cpu", help="cpu (default), or cuda: the same loop's host path there")
    ap.add_argument("--profile", action="store_true", help="instead: the engine's own time per step by function "
                    "(cProfile, one round at the first world and batch)")  # fmt: skip
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.profile:
        return profile(args.worlds[0], args.batches[0], args.steps, dev)
    print(f"device {dev}, threads {torch.get_num_threads()}, {N_IMAGENET:,} samples, images 3x{SIDE}x{SIDE}, trivial module, "
          f"train.sync_every=20; medians of {args.rounds} interleaved rounds of {args.steps} steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            for batch in args.batches:
                s, st = engine_for(world, batch, Path(tmp), dev)
                engine, bare = [], []
                for _ in range(args.rounds):  # interleaved: a noisy stretch hits both sides alike
                    engine += engine_rounds(s, st, args.steps, 1)
                    bare += bare_rounds(batch, args.steps, 1, dev)
                e, b = statistics.median(engine), statistics.median(bare)
                print(f"host overhead: {1000 * (e - b):.2f} ms per step, ratio {e / b:.2f} (world {world}, batch "
                      f"{batch}); bare loop {1000 * b:.2f} ms per step")  # fmt: skip
                ops, bare_ops = ops_per_step(s, st, batch, dev)
                print(f"ops dispatched: {ops:.0f} per step, bare loop {bare_ops:.0f} (world {world}, batch {batch})")
            times = [order_ms(world) for _ in range(3)]
            ms, draws = (statistics.median(t[i] for t in times) for i in (0, 1))
            print(f"epoch order: {ms:.1f} ms and its draws {draws:.1f} ms, once per epoch (world {world}); before, "
                  f"every len() of the batches built the order: 4 a step on GPUs (6 with train.ema) = "
                  f"{4 * ms:.0f}-{6 * ms:.0f} ms per step")  # fmt: skip


if __name__ == "__main__":
    main()
