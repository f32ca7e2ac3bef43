"""Image files given on the command line: finding them (files, directories, globs), decoding and
preprocessing them as the weights say, batching, and turning every bad file into one error line."""

from __future__ import annotations

import glob
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.folder import default_workers
from ..data.images import ImageError, is_image_path, load_rgb
from ..data.preprocess import Preprocess
from ..data.transforms import resize_square


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
            matches = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
            if not matches:
                out.append(Item(spec, error=f"{spec}: no files match"))
            out += [Item(f) for f in matches]
        else:
            out.append(Item(spec, error=f"{spec}: no such file or directory"))
    return out


def _decode(item: Item, resize: Callable) -> Item:
    if item.error is None:
        try:
            item.image = resize(load_rgb(item.file))
        except ImageError as e:
            item.error = str(e)
    return item


def decoded(items: list[Item], pre: Preprocess, threads: int, ahead: int) -> Iterator[Item]:
    """``items`` in order, decoded and resized by ``threads`` threads at most ``ahead`` images ahead of the
    reader (Pillow decodes and resizes without the GIL), so decoding overlaps the network and memory stays
    bounded for any number of files."""
    resize = resize_square(pre.resize)
    todo = iter(items)
    pool = ThreadPoolExecutor(threads)
    pending: deque[Future[Item]] = deque()
    try:
        while True:
            while len(pending) < ahead and (item := next(todo, None)) is not None:
                pending.append(pool.submit(_decode, item, resize))
            if not pending:
                return
            yield pending.popleft().result()
    finally:  # a reader that stops (Ctrl-C, `| head`) waits for the files being decoded, not for the queue
        pool.shutdown(cancel_futures=True)


def batches(items: list[Item], pre: Preprocess, batch_size: int) -> Iterator[list[Item]]:
    """``batch_size`` good images at a time, decoded ahead in threads (one per core); failures ride along."""
    batch: list[Item] = []
    good = 0
    for item in decoded(items, pre, default_workers(-1), 2 * batch_size):
        batch.append(item)
        good += item.image is not None
        if good >= batch_size:
            yield batch
            batch, good = [], 0
    if batch:
        yield batch


def run(pre: Preprocess, items: list[Item], batch_size: int, device: torch.device,
        fn: Callable[[torch.Tensor], torch.Tensor],
        normalize: bool = True) -> Iterator[tuple[Item, torch.Tensor | None]]:  # fmt: skip
    """Yield (item, fn(normalised batch)[row]) for good items and (item, None) for failed ones, in order.
    ``normalize=False``: fn gets the uint8 batch (a graph that normalises inside)."""
    norm = pre.normalizer().to(device) if normalize else (lambda x: x)
    for batch in batches(items, pre, batch_size):
        good = [(i, i.image) for i in batch if i.image is not None]
        rows: dict[int, torch.Tensor] = {}
        if good:
            x = norm(torch.stack([image for _, image in good]).to(device))  # (B, 3, S, S)
            with torch.no_grad():
                out = fn(x).float().cpu()
            rows = {id(item): out[k] for k, (item, _) in enumerate(good)}
        for item in batch:
            yield item, rows.get(id(item))
            item.image = None  # free memory as we go
