"""Image files given on the command line: finding them (files, directories, globs), decoding and
preprocessing them as the weights say, batching, and turning every bad file into one error line."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.images import ImageError, is_image_path, load_rgb
from .data.preprocess import Preprocess
from .data.transforms import resize_square


@dataclass
class Item:
    file: str
    image: torch.Tensor | None = None  # uint8 (3, S, S)
    error: str | None = None


def collect_files(specs: list[str]) -> list[Item]:
    """Files, directories (recursively, images only) and globs -> items in a stable order.
    A path that matches nothing becomes an item with an error."""
    out: list[Item] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not files:
                out.append(Item(spec, error=f"{spec}: directory has no image files"))
            out += [Item(str(f)) for f in files]
        elif p.exists():
            out.append(Item(spec))  # given explicitly: whatever it is, the decoder will judge it
        elif glob.has_magic(spec):
            files = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not files:
                out.append(Item(spec, error=f"{spec}: no files match"))
            out += [Item(f) for f in files]
        else:
            out.append(Item(spec, error=f"{spec}: no such file or directory"))
    return out


def batches(items: list[Item], pre: Preprocess, batch_size: int) -> Iterator[list[Item]]:
    """Decode and resize lazily, ``batch_size`` good images at a time; failures ride along."""
    resize = resize_square(pre.resize)
    batch: list[Item] = []
    for item in items:
        if item.error is None:
            try:
                item.image = resize(load_rgb(item.file))
            except ImageError as e:
                item.error = str(e)
        batch.append(item)
        if sum(i.image is not None for i in batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(pre: Preprocess, items: list[Item], batch_size: int, device: torch.device,
        fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[tuple[Item, torch.Tensor | None]]:  # fmt: skip
    """Yield (item, fn(normalised batch)[row]) for good items and (item, None) for failed ones, in order."""
    norm = pre.normalizer().to(device)
    for batch in batches(items, pre, batch_size):
        good = [i for i in batch if i.image is not None]
        rows: dict[int, torch.Tensor] = {}
        if good:
            x = norm(torch.stack([i.image for i in good]).to(device))  # (B, 3, S, S)
            with torch.no_grad():
                out = fn(x).float().cpu()
            rows = {id(item): out[k] for k, item in enumerate(good)}
        for item in batch:
            yield item, rows.get(id(item))
            item.image = None  # free memory as we go
