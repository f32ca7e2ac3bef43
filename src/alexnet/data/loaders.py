"""From a DataConfig to batches: the built-in digits or an image folder, sharded across ranks.

Every loader yields ``(images uint8 (B, 3, S, S), labels (B,), indices (B,))`` for one rank;
augmentation and normalisation then run on the batch on the training device (transforms.py).
Order: a permutation per (seed, epoch), padded to a multiple of the world size for training
(every rank takes the same number of steps) and split exactly, without padding, for evaluation.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import UserError
from ..models import get_model_info
from . import digits
from .classes import is_imagenet
from .folder import FolderDataset, FolderIndex, default_workers, scan_folder
from .stats import STATS_FILENAME, ColourStats, compute_stats
from .store import StoreImages, is_store, open_store
from .transforms import BatchAugment, Normalizer, random_resized_crop, resize_square

log = logging.getLogger("alexnet")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:  # evaluation: every sample exactly once over all ranks
        return torch.arange(n)[rank::world]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    pad = (-n) % world
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world]


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
    ):
        self.source = source
        self.batch_size = batch_size  # per rank
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = rank, world
        self.workers = workers
        self.pin_memory = pin_memory
        # GPUs: batches gathered ahead on threads into pinned memory; 4 threads read a store at 62-63k img/s
        # on a 16-core H200 host (benchmarks/gpu.py), 1 thread at 20k
        self.gather_threads = max(1, min(4, (os.cpu_count() or 1) // 4))
        self.prefetch_depth = 2 * self.gather_threads + 2

    def __len__(self) -> int:
        return -(
            -len(epoch_indices(len(self.source), 0, self.seed, self.rank, self.world, self.shuffle)) // self.batch_size
        )

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        idx = epoch_indices(len(self.source), epoch, self.seed, self.rank, self.world, self.shuffle)
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)][start_batch:]
        if isinstance(self.source, TensorSource):
            if self.pin_memory:  # GPU: gather the next batches into pinned memory on threads while it computes
                yield from prefetch(self._tensor_batch, batches, self.prefetch_depth, self.gather_threads)
            else:
                yield from (self._tensor_batch(b) for b in batches)
            return
        self.source.set_epoch(epoch)
        if not batches:
            return
        loader = torch.utils.data.DataLoader(
            self.source,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers else None,
        )
        yield from loader

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


def prefetch(fn: Callable[[Any], Batch], items: list[Any], depth: int, threads: int) -> Iterator[Batch]:
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


@dataclass
class DataBundle:
    train: Batches | None
    val: Batches
    class_names: list[str]
    normalizer: Normalizer
    augment: BatchAugment
    crop: int
    resize: int
    stats: ColourStats
    skipped: list[str]


AUTO_STATS_IMAGES = 5000


def resolve_stats(
    cfg: Config, train_source: TensorSource | None, train_index: FolderIndex | None = None
) -> ColourStats:
    """Explicit file > DATA/alexnet-stats.npz > ImageNet's values (ImageNet data, channel mode) >
    computed now from a sample of the training set (cached in the run directory as stats.npz)."""
    d = cfg.data
    if d.stats:
        return ColourStats.load(d.stats)
    if d.path is not None and (Path(d.path) / STATS_FILENAME).is_file():
        return ColourStats.load(Path(d.path) / STATS_FILENAME)
    if train_source is not None:  # built-in digits or a prepared store: computed from (a sample of) the train split
        n = len(train_source)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:AUTO_STATS_IMAGES].sort().values
        source = "digits/train" if d.path is None else f"{d.path} ({len(pick)} of {n} images)"
        return compute_stats((train_source.x[pick[i : i + 256]] for i in range(0, len(pick), 256)), source)
    if train_index is None or (is_imagenet(train_index.classes) and d.normalize == "channel"):
        return ColourStats.imagenet()
    log.info(
        "no colour statistics for %s: computing them from up to %d training images "
        "(`alexnet pca-stats --data DIR` stores them once for all runs)",
        d.path,
        AUTO_STATS_IMAGES,
    )
    from .pca import folder_stats

    return folder_stats(train_index, d.resize, AUTO_STATS_IMAGES, d.workers)


def make_normalizer(cfg: Config, stats: ColourStats) -> Normalizer:
    d = cfg.data
    mean = torch.tensor(d.mean if d.mean is not None else stats.mean, dtype=torch.float32)
    std = torch.tensor(d.std if d.std is not None else stats.std, dtype=torch.float32)
    mean_image = None
    if d.normalize == "pixel":
        if stats.mean_image is None:
            raise UserError(
                "data.normalize=pixel needs a mean image: run `alexnet pca-stats --data DIR` first "
                "(or use data.normalize=channel)"
            )
        mean_image = torch.from_numpy(np.asarray(stats.mean_image, dtype=np.float32))
    return Normalizer(
        mean,
        std,
        mean_image,
        torch.tensor(stats.eigval, dtype=torch.float32),
        torch.tensor(stats.eigvec, dtype=torch.float32),
    )


def build_data(
    cfg: Config,
    rank: int = 0,
    world: int = 1,
    train: bool = True,
    pin_memory: bool = False,
    val_path: str | None = None,
) -> DataBundle:
    d, t = cfg.data, cfg.train
    info = get_model_info(cfg.model.name)
    crop = d.crop or info.input_size
    if t.batch_size % world:
        raise UserError(
            f"train.batch_size {t.batch_size} is the global batch: it must divide by the world size {world}"
        )
    per_rank = t.batch_size // world
    workers = default_workers(d.workers)
    skipped: list[str] = []
    if d.path is None:
        split = digits.load_digits_split(d.resize, d.val_fraction, seed=0)
        train_src = TensorSource(split["train_x"], split["train_y"])
        val_src: TensorSource | FolderDataset = TensorSource(split["val_x"], split["val_y"])
        class_names = list(digits.CLASS_NAMES)
        stats = resolve_stats(cfg, train_src)
        train_ds: TensorSource | FolderDataset | None = train_src
    elif is_store(d.path):
        store_train, y_train, class_names = open_store(d.path, "train")
        store_val, y_val, _ = open_store(d.path, "val")
        if d.resize != store_train.size:
            log.info(
                "%s holds %dx%d images: using data.resize=%d",
                d.path,
                store_train.size,
                store_train.size,
                store_train.size,
            )
            d.resize = store_train.size
            if crop > d.resize:
                raise UserError(
                    f"data.crop {crop} is larger than the store's images ({d.resize}); prepare it with a larger --size"
                )
        train_src = TensorSource(store_train, y_train)
        val_src = TensorSource(store_val, y_val)
        train_ds = train_src if train else None
        stats = resolve_stats(cfg, train_src)
    else:
        root = Path(d.path)
        if not root.exists():
            raise UserError(f"data path not found: {root}")
        train_index: FolderIndex | None = None
        if train or not val_path:
            train_index = scan_folder(root / "train", check=train)
            class_names = train_index.classes
        val_dir = Path(val_path) if val_path else root / "val"
        val_index = scan_folder(val_dir, classes=train_index.classes if train_index else None, check=True)
        if train_index is None:
            class_names = val_index.classes
        skipped = (train_index.bad if train_index and train else []) + val_index.bad
        if skipped and t.strict_data:
            raise UserError(f"{len(skipped)} unreadable image files (train.strict_data): " + "; ".join(skipped))
        stats = resolve_stats(cfg, None, train_index if train else None)
        val_src = FolderDataset(val_index, resize_square(d.resize), d.resize)
        train_ds = None
        if train and train_index is not None:
            if d.train_aug == "modern":
                train_ds = FolderDataset(train_index, random_resized_crop(crop, d.min_scale), crop, t.seed, random=True)
            else:
                train_ds = FolderDataset(train_index, resize_square(d.resize), d.resize)
    normalizer = make_normalizer(cfg, stats)
    augment = BatchAugment(d.train_aug, crop, normalizer, d.pca_noise, d.min_scale)
    mk = lambda src, shuffle: Batches(src, per_rank, shuffle, t.seed, rank, world, workers, pin_memory)  # noqa: E731
    return DataBundle(
        train=mk(train_ds, True) if train and train_ds is not None else None,
        val=mk(val_src, False),
        class_names=class_names,
        normalizer=normalizer,
        augment=augment,
        crop=crop,
        resize=d.resize,
        stats=stats,
        skipped=skipped,
    )
