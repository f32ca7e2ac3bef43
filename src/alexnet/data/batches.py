"""Batches of one rank: the epoch's order, mid-epoch starts, and reading ahead.

Every source yields ``(images uint8 (B, 3, S, S), labels (B,), indices (B,))`` for one rank; augmentation and
normalisation then run on the batch on the training device (transforms.py). Order: a permutation per
(seed, epoch), padded to a multiple of the world size for training (every rank takes the same number of
steps) and split exactly, without padding, for evaluation.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.signals import ignore_stop_signals
from .folder import FolderDataset
from .keyed_random import Draws
from .store import StoreImages

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
DrawsOf = Callable[[int, int, torch.Tensor], Draws]  # (seed, epoch, a rank's order) -> the samples' draws


def epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:  # evaluation: every sample exactly once over all ranks
        return torch.arange(n)[rank::world]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    pad = (-n) % world
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world]


def samples_per_rank(n: int, rank: int, world: int, shuffle: bool) -> int:
    """``len(epoch_indices(n, ...))`` without building it: training pads to a multiple of the world size."""
    return -(-n // world) if shuffle else len(range(rank, n, world))


class Batches:
    """One rank's batches of a dataset for a given epoch, optionally starting mid-epoch."""

    def __init__(
        self,
        source: TensorSource | FolderDataset,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        pin_memory: bool = False,
        draws: DrawsOf | None = None,
    ):
        self.source = source
        self.batch_size = batch_size  # per rank
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = rank, world
        self.workers = workers
        self.pin_memory = pin_memory
        self.draws = draws  # training: the augmentation's draws, taken per epoch with the order (epoch_draws)
        # GPUs: batches gathered ahead on threads into pinned memory; 4 threads read a store at 62-63k img/s
        # on a 16-core H200 host (benchmarks/results/gpu-h200-run2.log), 1 thread at 20k
        self.gather_threads = max(1, min(4, (os.cpu_count() or 1) // 4))
        self.prefetch_depth = 2 * self.gather_threads + 2
        # this epoch's order and draws, and the next's (training)
        self._orders: dict[int, Future[tuple[torch.Tensor, Draws | None]]] = {}

    def __len__(self) -> int:
        """Batches per epoch, by arithmetic (``epoch_indices``' lengths): no permutation is built. The engine asks
        several times a step, and a permutation of ImageNet's 1.28 M samples costs 8-52 ms on a 2-core CPU."""
        return -(-samples_per_rank(len(self.source), self.rank, self.world, self.shuffle) // self.batch_size)

    def __bool__(self) -> bool:  # a dataset is there even when it has no batch (``x or default`` must not count)
        return True

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start_batch: int = 0, size: int | None = None, ahead: bool = False) -> Iterator[Batch]:
        """The batches of ``epoch`` from ``start_batch``; ``size``: the side a folder's workers crop to this epoch
        (progressive resizing; in-memory sources are cropped on the batch); ``ahead``: another epoch follows, so
        take its order and draws on a thread meanwhile. Batch ``i`` is the ``span(i)`` of the epoch's order."""
        order, steps = self._order(epoch), range(start_batch, len(self))
        batches = (order[self.span(i)] for i in steps)  # a view a step, none for the batches skipped
        if isinstance(self.source, TensorSource):
            if ahead:
                self._draw_ahead(epoch + 1)
            if self.pin_memory:  # GPU: gather the next batches into pinned memory on threads while it computes
                yield from prefetch(self._tensor_batch, batches, self.prefetch_depth, self.gather_threads)
            else:
                yield from (self._tensor_batch(b) for b in batches)
            return
        self.source.set_epoch(epoch)
        if size is not None:
            self.source.set_size(size)
        if not steps:
            return
        loader = torch.utils.data.DataLoader(
            self.source,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers else None,
            worker_init_fn=ignore_stop_signals if self.workers else None,  # the main process handles SIGTERM
        )
        it = iter(loader)  # the workers start (a fork on Linux) before a thread draws the next order
        if ahead:
            self._draw_ahead(epoch + 1)
        yield from it

    def span(self, batch: int) -> slice:
        """Batch ``batch``'s positions in its epoch's order, and so its rows of the epoch's draws."""
        n = samples_per_rank(len(self.source), self.rank, self.world, self.shuffle)
        return slice(batch * self.batch_size, min((batch + 1) * self.batch_size, n))

    def epoch_draws(self, epoch: int) -> Draws | None:
        """The augmentation's draws for this rank's samples of ``epoch``, in the epoch's order (batch ``i``'s are
        the rows of its ``span``), taken with the order; None without ``draws``. So a step hashes nothing: hashing
        a batch's keys and draws was 33 of a step's ops dispatched (benchmarks/host_overhead.py), 32 of them
        kernels, each a launch on a GPU."""
        return self._drawn(epoch)[1]

    def _order(self, epoch: int) -> torch.Tensor:
        return self._drawn(epoch)[0]

    def _drawn(self, epoch: int) -> tuple[torch.Tensor, Draws | None]:
        """This rank's samples of ``epoch`` in order, and their draws: taken ahead on a thread while the epoch
        before trained, or now (the first epoch, a resumed one, evaluation)."""
        ahead = self._orders.get(epoch)
        if ahead is not None:
            return ahead.result()
        out = self._take(epoch)
        if self.shuffle:  # kept: a --budget or mid-epoch restart of the same epoch asks again
            self._orders = {epoch: Future()}
            self._orders[epoch].set_result(out)
        return out

    def _take(self, epoch: int) -> tuple[torch.Tensor, Draws | None]:
        idx = epoch_indices(len(self.source), epoch, self.seed, self.rank, self.world, self.shuffle)
        return idx, self.draws(self.seed, epoch, idx) if self.draws is not None and self.shuffle else None

    def _draw_ahead(self, epoch: int) -> None:
        """Take ``epoch``'s order and draws on a thread (training): for ImageNet's 1.28 M samples on a 2-core AVX2
        EPYC, the permutation takes 12-68 ms and one rank's draws 0.9-1.0 s (benchmarks/host_overhead.py), and at 64
        ranks of batch 256 an epoch is 78 steps."""
        if self.shuffle and epoch not in self._orders:
            kept = {e: f for e, f in self._orders.items() if e == epoch - 1}
            self._orders = kept | {epoch: _order_thread().submit(self._take, epoch)}

    def _tensor_batch(self, b: torch.Tensor) -> Batch:
        src = self.source
        assert isinstance(src, TensorSource)
        if isinstance(src.x, StoreImages):
            x = src.x.gather(b, pin_memory=self.pin_memory)
        else:
            x = src.x[b].pin_memory() if self.pin_memory else src.x[b]
        y = src.y[b]
        if self.pin_memory:  # labels and indices too, so that their copies to the GPU are asynchronous
            y, b = y.pin_memory(), b.pin_memory()
        return x, y, b


@functools.cache
def _order_thread() -> ThreadPoolExecutor:
    """One thread for drawing epoch orders ahead (torch.randperm releases the GIL)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="alexnet-order")


def prefetch(fn: Callable[[Any], Batch], items: Iterable[Any], depth: int, threads: int) -> Iterator[Batch]:
    """``fn(item)`` for every item, in order, computed by ``threads`` threads up to ``depth`` items ahead
    (the gathers and reads release the GIL)."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="alexnet-prefetch")
    pending: deque[Future[Batch]] = deque()
    rest = iter(items)
    try:
        for item in itertools.islice(rest, depth):
            pending.append(pool.submit(fn, item))
        while pending:
            batch = pending.popleft().result()
            nxt = next(rest, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class TensorSource:
    x: torch.Tensor | StoreImages  # uint8 (N, 3, S, S), indexed with a tensor of indices
    y: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.y)
