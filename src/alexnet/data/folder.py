"""Image folders (ImageFolder / ImageNet layout): scanning, checking, and per-image loading."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import keyed_random
from ..errors import UserError
from .images import ImageError, is_image_path, load_rgb

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


def find_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such directory (expected DIR/train/<class>/* and DIR/val/<class>/*)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
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


def scan_folder(split_dir: Path, classes: list[str] | None = None, check: bool = True) -> FolderIndex:
    """Index ``split_dir/<class>/**/<image>``; with ``check`` every file's header is read once."""
    found = find_classes(split_dir)
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{split_dir}: class folders not in the training set: {', '.join(unknown[:5])}")
    to_idx = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    bad: list[str] = []
    for c in found:
        for p in sorted((split_dir / c).rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            if not is_image_path(p):
                bad.append(f"{p}: not an image file (extension)")
                continue
            reason = _header_ok(str(p)) if check else None
            if reason:
                bad.append(f"{p}: {reason}")
            else:
                samples.append((str(p), to_idx[c]))
    if not samples:
        raise UserError(f"{split_dir}: no readable images found")
    return FolderIndex(split_dir, classes, samples, bad)


class FolderDataset(torch.utils.data.Dataset):
    """Returns (uint8 (3, S, S) image, label, index). An image that fails to decode mid-run gets
    label -100 (ignored by the loss and the counts) instead of killing the epoch."""

    def __init__(self, index: FolderIndex, transform: Callable, size: int, seed: int = 0, random: bool = False):
        self.samples = index.samples
        self.transform = transform
        self.size = size
        self.seed = seed
        self.random = random
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
