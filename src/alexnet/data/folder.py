"""Image folders (ImageFolder / ImageNet layout): scanning, checking, and per-image loading."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from . import keyed_random
from .images import ImageError, is_image_path, load_rgb
from .index import Listing, build, io_threads, load_cached, save

log = logging.getLogger("alexnet")


@dataclass
class FolderIndex:
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    bad: list[str] = field(default_factory=list)  # "path: reason" for files refused by the header check


def default_workers(requested: int) -> int:
    """-1: one data-loader process per available core, at most 8."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


def _what_is_there(data: Path) -> str:
    """What a --data folder without train/ holds, when that is a known first try: images directly in it, or
    class folders without the train/val split."""
    try:
        entries = list(os.scandir(data)) if data.is_dir() else []
        images = sum(e.is_file() and is_image_path(e.name) for e in entries)
        classes = any(e.is_dir() and any(is_image_path(f) for f in os.listdir(e.path)[:50]) for e in entries)
    except OSError:  # an unreadable folder: the error without the guess
        return ""
    if images:
        return (
            f"; {data} holds {images} images directly: sort them into class folders (ImageNet's flat val/: "
            "`alexnet prepare-val`)"
        )
    if classes:
        return f"; {data} holds class folders without the split: move them into {data}/train and make a {data}/val"
    return ""


def find_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        data = split_dir.parent
        if data.is_file():
            raise UserError(f"{data} is a file; the data is a folder holding train/ and val/ (or a store)")
        if data.name in ("train", "val") and (data.parent / split_dir.name).is_dir():
            raise UserError(f"{split_dir}: no such directory; {data} is a split itself: the data is its parent, "
                            f"{data.parent}")  # fmt: skip
        raise UserError(f"{split_dir}: no such directory (expected DIR/train/<class>/* and DIR/val/<class>/*)"
                        f"{_what_is_there(data)}")  # fmt: skip
    # hidden folders and macOS's __MACOSX (resource forks a zip made on a Mac carries) are never classes
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    if not classes:
        raise UserError(f"{split_dir}: no class folders inside (expected {split_dir}/<class>/<image>)")
    return classes


def _header_ok(path: str) -> str | None:
    """A cheap check (header and end marker, no decode): None when the file looks whole, else the reason."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            fmt = im.format
        # a truncated file lacks its end marker: JPEG's EOI (FF D9), PNG's IEND chunk (one seek, 64 bytes)
        marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
        if marker is not None:
            with open(path, "rb") as f:
                f.seek(max(0, Path(path).stat().st_size - 64))
                tail = f.read()
            # no end marker at the end: cut short, or a whole image followed by other data (phone and camera
            # JPEGs append previews, maker notes, even videos). Decoding tells them apart, for these files only.
            if marker not in tail and not _decodes(path):
                return "truncated (no end-of-image marker, and decoding fails)"
        return None
    except Image.UnidentifiedImageError:
        return "not an image file"
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f"unreadable ({e})"


def _decodes(path: str) -> bool:
    try:
        load_rgb(path)
        return True
    except ImageError:
        return False


def scan_folder(split_dir: Path, classes: list[str] | None = None, check: bool = True, rank: int = 0,
                world: int = 1) -> FolderIndex:  # fmt: skip
    """Index ``split_dir/<class>/**/<image>`` from its cached listing (data/index.py: built in parallel, by rank 0
    alone under torchrun while the others wait). ``check``: also read every file's header, in parallel threads
    (`prepare`, `--strict`, ``data.check_files``); otherwise a bad file is found when it is decoded."""
    found = find_classes(split_dir)
    defines_classes, classes = classes is None, classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{split_dir}: class folders not in the training set: {', '.join(unknown[:5])}")
    listing = _listing(split_dir, found, rank, world)
    empty = [c for c in found if not listing.files[c]]
    if empty and defines_classes:  # the training split (a val split may lack some): as torchvision's ImageFolder
        raise UserError(f"{split_dir}: class folders without images: {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''} (a class with no image cannot be learned; remove the "
                        "folder or fill it)")  # fmt: skip
    to_idx = {c: i for i, c in enumerate(classes)}
    # strings, not Paths: joining 1.28 M pathlib paths alone takes ~20 s (measured, 100k files: 1.8 s)
    samples = [(p + r, to_idx[c]) for c in found for p in [f"{split_dir}{os.sep}{c}{os.sep}"] for r in listing.files[c]]
    bad = [
        f"{split_dir}{os.sep}{c}{os.sep}{r}: not an image file (extension)"
        for c in found
        for r in listing.not_images[c]
    ]
    if check and samples:
        with ThreadPoolExecutor(io_threads()) as ex:
            reasons = list(ex.map(_header_ok, [p for p, _ in samples], chunksize=64))
        bad += [f"{p}: {r}" for (p, _), r in zip(samples, reasons) if r]
        samples = [s for s, r in zip(samples, reasons) if not r]
    if not samples:
        raise UserError(f"{split_dir}: no readable images found")
    return FolderIndex(split_dir, classes, samples, bad)


def _listing(split_dir: Path, classes: list[str], rank: int, world: int) -> Listing:
    """The cached listing, or a fresh one (saved for next time). Under torchrun rank 0 builds it while the
    others wait, then they read it (each lists the folder itself only if it could not be cached anywhere)."""
    from ..parallel import distributed

    listing = None
    if rank == 0:
        listing = load_cached(split_dir, classes)
        if listing is None:
            t, started = time.perf_counter(), time.time_ns()
            listing = build(split_dir, classes)
            where = save(split_dir, listing, started)
            log.info("listed %s: %d files in %.1fs (index %s)", split_dir, sum(map(len, listing.files.values())),
                     time.perf_counter() - t, where or "not cached: no writable location")  # fmt: skip
    if world > 1:
        distributed.barrier()
    return listing or load_cached(split_dir, classes) or build(split_dir, classes)


class FolderDataset(torch.utils.data.Dataset):
    """Returns (uint8 (3, S, S) image, label, index). An image that fails to decode mid-run gets
    label -100 (ignored by the loss and the counts) instead of killing the epoch."""

    def __init__(self, index: FolderIndex, transform: Callable, size: int, seed: int = 0, random: bool = False,
                 make_transform: Callable[[int], Callable] | None = None):  # fmt: skip
        self.samples = index.samples
        self.transform = transform
        self.size = size
        self.seed = seed
        self.random = random
        self.make_transform = make_transform  # size -> transform: the workers' output follows progressive resizing
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_size(self, size: int) -> None:
        """This epoch's output side (set before the epoch's workers start), when the transform makes the crop."""
        if self.make_transform is not None and size != self.size:
            self.transform, self.size = self.make_transform(size), size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[i]
        if self.random:  # per-image randomness keyed by (seed, epoch, index): worker-count independent
            torch.manual_seed(keyed_random.seed_of(self.seed, self.epoch, i))
        try:
            img = self.transform(load_rgb(path))
        except ImageError as e:
            log.warning("skipping %s", e)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -100, i
        return img, label, i
