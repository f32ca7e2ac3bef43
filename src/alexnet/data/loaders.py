"""From a resolved Config to data: the built-in digits, an image folder or a prepared store, sharded
across ranks, with the colour statistics and the preprocessing the run uses.

The config reaching here is resolved (``engine.setup.resolve_config``): ``data.crop`` is set and
``data.resize`` matches a store's images; nothing here rewrites it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..config import Config
from ..errors import UserError
from . import digits
from .batches import Batches, TensorSource
from .classes import is_imagenet
from .folder import FolderDataset, FolderIndex, default_workers, scan_folder
from .keyed_random import seeded_sample
from .preprocess import Preprocess
from .stats import STATS_FILENAME, ColourStats, compute_stats
from .store import StoreImages, is_store, open_store, read_manifest
from .transforms import BatchAugment, Normalizer, epoch_draws, random_resized_crop, resize_square

log = logging.getLogger("alexnet")
AUTO_STATS_IMAGES = 5000


@dataclass
class SplitData:
    """One split of a dataset: uint8 images by index, labels, and a name per image (file or digits[i])."""

    tensors: TensorSource | None  # digits and stores: the whole split addressable as tensors
    index: FolderIndex | None  # image folders: files and labels, decoded per image
    class_names: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def identity(self) -> str:
        """What a resumed run compares to know it reads the same images in the same order: their count and a
        hash of their names less the folder all of them share, with / for separators (not the pixels, nor
        where the folder is: a moved folder, or its store, is the same set). 0.4 s for 1.28 M ImageNet-like
        names on the 2-core AVX2 machine. (Linux file names need not be UTF-8: their bytes are hashed as they are.)"""
        shared = os.path.commonprefix([self.names[0], self.names[-1]]) if self.names else ""
        k = max(shared.rfind("/"), shared.rfind("\\")) + 1
        h = hashlib.sha256("\n".join(n[k:] for n in self.names).replace("\\", "/").encode("utf-8", "surrogateescape"))
        return f"{len(self)} images, sha256 {h.hexdigest()[:16]}"

    def dataset(self, size: int, make_transform: Callable[[int], Callable] | None = None,
                seed: int = 0) -> TensorSource | FolderDataset:  # fmt: skip
        """Something ``Batches`` reads; folders decode each image with ``make_transform(size)`` (a random one,
        keyed by ``seed``, making ``size`` x ``size`` images; any size, for progressive resizing), by default a
        resize to a ``size`` square."""
        if self.tensors is not None:
            return self.tensors
        assert self.index is not None
        if make_transform is None:
            return FolderDataset(self.index, resize_square(size), size, seed)
        return FolderDataset(self.index, make_transform(size), size, seed, random=True, make_transform=make_transform)


def store_size(path: str) -> int | None:
    """The side of a prepared store's images (from its manifest alone), or None when ``path`` is not a store."""
    return int(read_manifest(Path(path))["size"]) if is_store(path) else None


def data_of(given: str | None, cfg: Config | None, what: str) -> str | None:
    """The data a command reads for trained weights: ``given`` (--data), else the run's own, which must still be
    where it was trained (a moved folder is named, with the flag that points to it)."""
    if given is not None:
        return given
    if cfg is None:
        raise UserError(f"{what}: a weights file does not know its data; pass --data DIR")
    path = cfg.data.path
    if path is not None and not Path(path).exists():
        raise UserError(f"the run's data {path} is not there any more; pass --data DIR where it is now")
    return path


def open_split(path: str | None, split: str, resize: int, classes: list[str] | None = None, check: bool = False,
               val_fraction: float = 0.2, split_dir: str | None = None, rank: int = 0,
               world: int = 1) -> SplitData:  # fmt: skip
    """``split`` ("train" or "val") of the built-in digits (``path`` None), a store, or an image folder
    (``split_dir`` replaces ``path/split``). ``classes`` fixes the label order of a folder's val split."""
    if split_dir is not None:  # any run's val split, whatever its data was (digits, a store, a folder)
        if not Path(split_dir).is_dir():
            raise UserError(f"--split-dir {split_dir}: no such directory (expected {split_dir}/<class>/<image>)")
        index = scan_folder(Path(split_dir), classes, check, rank, world)
        return SplitData(None, index, index.classes, [p for p, _ in index.samples])
    if path is None:
        parts = digits.load_digits_split(resize, val_fraction, seed=0)
        x, y = parts[f"{split}_x"], parts[f"{split}_y"]
        return SplitData(
            TensorSource(x, y), None, list(digits.CLASS_NAMES), [f"digits/{split}[{i}]" for i in range(len(y))]
        )
    if is_store(path):
        images, labels, names = open_store(path, split)
        return SplitData(TensorSource(images, labels), None, names, images.files())
    root = Path(path)
    if not root.exists():
        raise UserError(f"data path not found: {root}")
    index = scan_folder(root / split, classes, check, rank, world)
    return SplitData(None, index, index.classes, [p for p, _ in index.samples])


def resolve_stats(cfg: Config, train: SplitData | None) -> ColourStats:
    """Explicit file > DATA/alexnet-stats.npz > ImageNet's values (ImageNet folders, channel mode) >
    computed now from a sample of the training set (cached in the run directory as stats.npz)."""
    d = cfg.data
    if d.stats:
        return ColourStats.load(d.stats)
    if d.path is not None and (Path(d.path) / STATS_FILENAME).is_file():
        return ColourStats.load(Path(d.path) / STATS_FILENAME)
    if train is None or (train.index is not None and is_imagenet(train.class_names) and d.normalize == "channel"):
        return ColourStats.imagenet()
    if train.tensors is not None:  # built-in digits or a prepared store: computed from a sample of the train split
        n, pick = len(train), seeded_sample(len(train), AUTO_STATS_IMAGES)
        source = "digits/train" if d.path is None else f"{d.path} ({len(pick)} of {n} images)"
        return compute_stats((train.tensors.x[pick[i : i + 256]] for i in range(0, len(pick), 256)), source)
    log.info("no colour statistics for %s: computing them from up to %d training images "
             "(`alexnet pca-stats --data DIR` stores them once for all runs)", d.path, AUTO_STATS_IMAGES)  # fmt: skip
    from .pca import folder_stats

    assert train.index is not None
    return folder_stats(train.index, d.resize, AUTO_STATS_IMAGES, d.workers)


def _shared_stats(cfg: Config, train: SplitData, rank: int, world: int) -> ColourStats:
    """``resolve_stats`` on rank 0 alone (computing them reads thousands of images); the others receive them."""
    if world == 1:
        return resolve_stats(cfg, train)
    import torch.distributed as dist

    box: list[ColourStats | None] = [resolve_stats(cfg, train) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # between this run's own processes (numpy arrays and strings)
    assert box[0] is not None
    return box[0]


def preprocess_for(cfg: Config, stats: ColourStats) -> Preprocess:
    """What this run feeds the network, from the (resolved) data config and the colour statistics."""
    d = cfg.data
    assert d.crop is not None, "resolve the config first"
    mean_image = None
    if d.normalize == "pixel":
        if stats.mean_image is None:
            raise UserError("data.normalize=pixel needs a mean image: run `alexnet pca-stats --data DIR` first "
                            "(or use data.normalize=channel)")  # fmt: skip
        mean_image = torch.as_tensor(stats.mean_image, dtype=torch.float32)
    mean = d.mean if d.mean is not None else [float(v) for v in stats.mean]
    std = d.std if d.std is not None else [float(v) for v in stats.std]
    return Preprocess.from_meta({"resize": d.resize, "crop": d.crop, "mean": mean, "std": std}, mean_image)


@dataclass
class DataBundle:
    train: Batches | None
    val: Batches
    class_names: list[str]
    preprocess: Preprocess
    normalizer: Normalizer  # preprocess.normalizer(stats): with the PCA eigenpairs for colour noise
    augment: BatchAugment
    stats: ColourStats
    skipped: list[str]
    train_set: str  # SplitData.identity() of the training split
    recalibration: Batches | None = None  # training images in the validation's view (train.bn_recalibrate)


def build_data(cfg: Config, rank: int = 0, world: int = 1, pin_memory: bool = False,
               device: torch.device | None = None) -> DataBundle:  # fmt: skip
    """Training and validation batches for one rank of a resolved config (``device``: the training device)."""
    d, t = cfg.data, cfg.train
    assert d.crop is not None, "resolve the config first"
    per_rank = _per_rank(t.batch_size, world)
    check = d.check_files or t.strict_data  # else a bad file is skipped when it is decoded
    train = open_split(d.path, "train", d.resize, None, check, d.val_fraction, rank=rank, world=world)
    val = open_split(d.path, "val", d.resize, train.class_names, check, d.val_fraction, rank=rank, world=world)
    skipped = (train.index.bad if train.index else []) + (val.index.bad if val.index else [])
    if skipped and t.strict_data:
        raise UserError(f"{len(skipped)} unreadable image files (train.strict_data): " + "; ".join(skipped))
    on_gpu = _jpeg_stores(d.path, device, train, val) if d.jpeg_decode == "gpu" else []
    stats = _shared_stats(cfg, train, rank, world)
    for images in on_gpu:  # after the statistics, which read a sample on the CPU
        images.decode_device = device
    pre = preprocess_for(cfg, stats)
    normalizer = pre.normalizer(stats)
    rrc = partial(random_resized_crop, min_scale=d.min_scale) if d.train_aug == "modern" and train.index else None
    workers = default_workers(d.workers)
    train_set = train.dataset(d.crop if rrc else d.resize, rrc, t.seed)
    return DataBundle(
        train=Batches(train_set, per_rank, True, t.seed, rank, world, workers, pin_memory, epoch_draws),
        val=Batches(val.dataset(d.resize), per_rank, False, t.seed, rank, world, workers, pin_memory),
        class_names=train.class_names,
        preprocess=pre,
        normalizer=normalizer,
        augment=BatchAugment(d.train_aug, d.crop, normalizer, d.pca_noise, d.min_scale, pre_cropped=rrc is not None),
        stats=stats,
        skipped=skipped,
        train_set=train.identity(),
        recalibration=Batches(train.dataset(d.resize), per_rank, True, t.seed, rank, world, workers, pin_memory)
        if t.bn_recalibrate
        else None,
    )


def _jpeg_stores(path: str | None, device: torch.device | None, *splits: SplitData) -> list[StoreImages]:
    """data.jpeg_decode=gpu: the JPEG stores whose batches the training GPU decodes; refused for anything else."""
    if device is None or device.type != "cuda":
        raise UserError(f"data.jpeg_decode=gpu decodes on the training GPU, and this run trains on {device}")
    sources = [s.tensors.x if s.tensors is not None else None for s in splits]
    jpeg = [x for x in sources if isinstance(x, StoreImages) and x.format == "jpeg"]
    if len(jpeg) != len(splits):
        raise UserError(
            f"data.jpeg_decode=gpu decodes JPEG stores (`alexnet prepare --format jpeg`); {path} is not one"
        )
    return jpeg


def build_eval_data(path: str | None, pre: Preprocess, class_names: list[str], batch_size: int, workers: int = -1,
                    split_dir: str | None = None, val_fraction: float = 0.2, rank: int = 0, world: int = 1,
                    pin_memory: bool = False) -> Batches:  # fmt: skip
    """The validation batches of ``path`` (or ``split_dir``) for weights preprocessed as ``pre``, labelled in the
    weights' class order; its classes must be the weights' classes. ``pin_memory`` (CUDA): batches in pinned
    memory, so that their copies to the GPU are asynchronous, as training's validation reads them."""
    size = store_size(path) if path is not None and split_dir is None else None
    folder = Path(path) if path is not None and size is None and split_dir is None else None
    if folder is not None and folder.is_dir() and not (folder / "val").is_dir():
        raise UserError(f"{folder / 'val'}: no such directory; to evaluate the class folders in {path} "
                        f"themselves, use --split-dir {path}")  # fmt: skip
    if size not in (None, pre.resize):
        raise UserError(f"{path} holds {size}px images but these weights want {pre.resize}px")
    val = open_split(path, "val", pre.resize, class_names, False, val_fraction, split_dir, rank, world)
    if val.class_names != class_names:
        raise UserError(f"the data's classes ({len(val.class_names)}) differ from the model's ({len(class_names)})")
    return Batches(val.dataset(pre.resize), batch_size, False, 0, rank, world, default_workers(workers), pin_memory)


def _per_rank(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise UserError(f"train.batch_size {batch_size} is the global batch: it must divide by the world size {world}")
    return batch_size // world
