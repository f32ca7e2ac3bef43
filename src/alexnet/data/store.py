"""A prepared input store: decode and resize once, then read uint8 batches straight from the file.

`alexnet prepare --data DIR --out STORE` writes, per split (train, val):
  ``<split>.u8``          raw images, uint8 (N, 3, S, S), one read per image          (--format raw)
  ``<split>.jpeg`` + ``<split>.offsets.npy``  re-encoded JPEGs, decoded per batch          (--format jpeg)
  ``<split>.labels.npy``  int64 labels;  ``<split>.files.json``  source paths
and ``manifest.json`` (size, format, classes, counts, progress, sha256 of every file). Writing is
chunked and resumable: an interrupted `prepare` continues where it stopped. `--data STORE` then
works for train, evaluate and pca-stats with no other change.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.progress import Progress
from ..engine.signals import ignore_stop_signals
from ..errors import DISK_FULL, UserError
from ..io.atomic import atomic_write, atomic_write_text, fsync_dir
from ..io.locks import LOCK_NAME, lock_dir, unlock_dir
from .folder import FolderIndex, default_workers, scan_folder
from .images import ImageError, load_rgb
from .transforms import resize_square

log = logging.getLogger("alexnet")
MANIFEST = "manifest.json"
VERSION = 1
CHUNK = 256
MAX_SIZE = 4096  # --size: a 4096 px square is 48 MiB a raw image; beyond it a store is not what anyone trains from


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: Path, advice: str = "prepare the store again into a new folder") -> dict[str, Any]:
    """A store's manifest, or one line naming it when it is damaged (not JSON, not a manifest's fields)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if not isinstance(manifest, dict) or {"size", "format", "classes", "splits"} - manifest.keys():
            raise ValueError("not a store manifest's fields")
    except (OSError, ValueError) as e:
        raise UserError(f"{root / MANIFEST}: damaged store manifest ({e}); {advice}") from None
    return manifest


def _encode(args: tuple[str, int, str, int]) -> tuple[bytes | None, str | None]:
    path, size, fmt, quality = args
    try:
        img = resize_square(size)(load_rgb(path))  # uint8 (3, S, S)
    except ImageError as e:
        return None, str(e)
    if fmt == "raw":
        return img.numpy().tobytes(), None
    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(data: str, out: str, size: int = 256, fmt: str = "raw", quality: int = 90, workers: int = -1, chunk: int = CHUNK,
            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    src, dst = Path(data), Path(out)
    if fmt not in ("raw", "jpeg"):
        raise UserError(f"--format must be raw or jpeg, got {fmt!r}")
    if not 1 <= size <= MAX_SIZE:
        raise UserError(f"--size must be 1 to {MAX_SIZE} pixels, got {size}")
    if is_store(src):
        raise UserError(f"{src} is already a prepared store")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst} is a file; --out names the folder the store goes in")
    # never write among a user's files; a folder with a manifest is a store (checked against it below), and may
    # hold more (pca-stats writes alexnet-stats.npz there)
    others = (
        [f.name for f in dst.iterdir() if not _store_file(f)] if dst.is_dir() and not (dst / MANIFEST).is_file() else []
    )
    if others:
        raise UserError(f"{dst} holds files that are not a store's (e.g. {others[0]}); choose a new or empty --out")
    train = scan_folder(src / "train", check=True)
    indexes = {"train": train, "val": scan_folder(src / "val", classes=train.classes, check=True)}
    dst.mkdir(parents=True, exist_ok=True)
    lock_dir(dst, "preparing a store in")
    try:
        return _prepare_locked(src, dst, indexes, size, fmt, quality, workers, chunk, progress)
    finally:
        unlock_dir(dst)


def _prepare_locked(src: Path, dst: Path, indexes: dict[str, FolderIndex], size: int, fmt: str, quality: int,
                    workers: int, chunk: int, progress: bool) -> dict[str, Any]:  # fmt: skip
    train = indexes["train"]
    mpath = dst / MANIFEST
    manifest: dict[str, Any]
    if mpath.is_file():
        manifest = read_manifest(dst, "choose another --out or remove it")
        if (manifest["size"], manifest["format"], manifest["classes"]) != (size, fmt, train.classes):
            raise UserError(f"{dst} holds a store with other settings; choose another --out or remove it")
        if manifest.get("source", str(src.resolve())) != str(src.resolve()):  # (a resume would mix two folders)
            raise UserError(f"{dst} is a store of {manifest['source']}, not of {src}: run the same command with "
                            f"--data {manifest['source']}, or choose another --out")  # fmt: skip
        log.info("%s in %s", "checking the complete store" if manifest.get("complete") else "resuming the store", dst)
    else:
        manifest = {"version": VERSION, "size": size, "format": fmt, "quality": quality, "classes": train.classes,
                    "source": str(src.resolve()), "splits": {}, "complete": False}  # fmt: skip
    n_workers = max(1, default_workers(workers))
    pool = ProcessPoolExecutor(n_workers, mp_context=get_context(START_METHOD), initializer=ignore_stop_signals)
    try:
        wrote = [s for s, index in indexes.items()
                 if _write_split(pool, dst, s, index, manifest, size, fmt, quality, progress, chunk)]  # fmt: skip
    finally:  # the workers ignore SIGTERM/SIGINT (the main process handles a stop), so they must end on the
        # executor's end-of-work messages, after their current image: multiprocessing.Pool's exit instead joined
        # workers it expected its SIGTERM to have ended, and hung at the end of a prepare (a CI run, 2-core machine)
        pool.shutdown(wait=True, cancel_futures=True)
    for split in indexes:
        if split in wrote or "sha256" not in manifest["splits"][split]:
            manifest["splits"][split]["sha256"] = {f: _sha256(dst / f) for f in manifest["splits"][split]["files"]}
    manifest["complete"] = True
    _save_manifest(dst, manifest)
    return manifest


def run_prepare(data: str, out: str, size: int = 256, fmt: str = "raw", quality: int = 90, workers: int = -1) -> int:
    """`alexnet prepare`: write the store and say what is in it."""
    try:
        m = prepare(data, out, size, fmt, quality, workers, progress=True)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise UserError(f"{out}: {e.strerror}; what was written is kept: free space and run the same command "
                        "again to continue") from None  # fmt: skip
    counts = ", ".join(f"{k} {v['count_written']}" for k, v in m["splits"].items())
    print(f"wrote {out}: {counts} images at {m['size']}x{m['size']} ({m['format']})")
    return 0


def _store_file(f: Path) -> bool:
    """A file ``prepare`` writes (train.u8, .val.progress.npz, manifest.json...): an interrupted first chunk
    leaves some of them and no manifest yet."""
    stem, dot, _ = f.name.lstrip(".").partition(".")
    return f.is_file() and (f.name == LOCK_NAME or (bool(dot) and stem in ("train", "val", "manifest")))


def _save_manifest(dst: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(dst / MANIFEST, json.dumps(manifest, indent=1))


def _write_split(pool: Any, dst: Path, split: str, index: FolderIndex, manifest: dict[str, Any], size: int, fmt: str,
                 quality: int, progress: bool, chunk_size: int = CHUNK) -> bool:  # fmt: skip
    """Write (or go on writing) one split; False when an earlier prepare finished it."""
    n = len(index.samples)
    info = manifest["splits"].setdefault(split, {"count": n, "done": 0, "written": 0, "failed": []})
    if info["count"] != n:
        raise UserError(f"{index.root} changed since the store was started ({info['count']} -> {n} images)")
    data_file = dst / (f"{split}.u8" if fmt == "raw" else f"{split}.jpeg")
    files = [data_file.name, f"{split}.labels.npy", f"{split}.files.json"] + (
        [f"{split}.offsets.npy"] if fmt == "jpeg" else []
    )
    info["files"] = files
    partial = dst / f".{split}.progress.npz"
    # finished: its labels and offsets are in their final files only (the progress file is gone), and writing
    # them again from nothing once made every label 0 (a second prepare, or a resume stopped in the next split)
    if info["done"] == n and not partial.is_file() and all((dst / f).is_file() for f in files):
        info.setdefault("count_written", info["written"])
        return False
    labels = np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    if info["done"] and not partial.is_file():  # what was written is unlabelled without it: write the split again
        info.update(done=0, written=0, failed=[], failed_paths=[])
    if info["done"]:
        with np.load(partial) as z:
            labels[: len(z["labels"])], offsets[: len(z["offsets"])] = z["labels"], z["offsets"]
    img_bytes = 3 * size * size
    mode = "r+b" if info["done"] and data_file.exists() else "wb"
    written = info["written"]
    with open(data_file, mode) as f:
        f.seek(written * img_bytes if fmt == "raw" else int(offsets[written]))
        f.truncate()
        chunks, done = -(-n // chunk_size), info["done"] // chunk_size
        # a bar on a terminal; plain log lines (about 20 per split) in a log file, like `alexnet train`
        bar = Progress(chunks, f"prepare {split}", progress, every=max(1, chunks // 20), initial=done)
        for start in range(info["done"], n, chunk_size):
            chunk = index.samples[start : start + chunk_size]
            results = list(pool.map(_encode, [(p, size, fmt, quality) for p, _ in chunk], chunksize=8))
            for (path, label), (blob, err) in zip(chunk, results):
                if blob is None:
                    info["failed"].append(err)
                    info.setdefault("failed_paths", []).append(path)
                    continue
                f.write(blob)
                labels[written] = label
                offsets[written + 1] = offsets[written] + len(blob)
                written += 1
            f.flush()
            os.fsync(f.fileno())
            info["done"], info["written"] = min(start + chunk_size, n), written
            atomic_write(partial, functools.partial(np.savez, labels=labels[:written], offsets=offsets[: written + 1]))
            _save_manifest(dst, manifest)
            bar.update(images=f"{min(start + chunk_size, n)}/{n}")
        bar.close()
    # what the finished split is, durable (each file fsynced, then the directory: atomic_write) before the progress
    # file goes, and its removal durable before the manifest can say complete: a power cut leaves one or the other
    atomic_write(dst / f"{split}.labels.npy", functools.partial(np.save, arr=labels[:written]))
    if fmt == "jpeg":
        atomic_write(dst / f"{split}.offsets.npy", functools.partial(np.save, arr=offsets[: written + 1]))
    failed = set(info.get("failed_paths", []))
    good = [p for p, _ in index.samples if p not in failed]  # written in sample order, failures skipped
    atomic_write_text(dst / f"{split}.files.json", json.dumps(good))
    info["count_written"] = written
    partial.unlink(missing_ok=True)
    fsync_dir(dst)
    if info["failed"]:
        log.warning(
            "%s: %d unreadable images left out:\n  %s", split, len(info["failed"]), "\n  ".join(info["failed"][:20])
        )
    return True


# worker processes of `prepare`: fork is cheap and safe on Linux; macOS must not fork a process that loaded
# torch (its system libraries are not fork-safe) and Windows cannot fork at all
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
DEFAULT_READ = "pread" if hasattr(os, "preadv") else "mmap"  # os.preadv: Linux and BSDs, not macOS/Windows


class StoreImages:
    """Index with a tensor of indices -> uint8 (B, 3, S, S) tensor, from the raw file or JPEG bytes."""

    def __init__(self, root: Path, split: str, manifest: dict[str, Any], read: str = DEFAULT_READ) -> None:
        self.size = manifest["size"]
        self.format = manifest["format"]
        n = manifest["splits"][split]["count_written"]
        # raw: "pread" (a read per image) or "mmap" (index_select on the memory map). One H200 machine,
        # 16 cores, loader alone into pinned memory (benchmarks/results/gpu-h200-run2.log): pread 62-63k img/s with 4 threads
        # on the first and later passes; mmap 70k with 1 thread once mapped but 28k on the first pass
        # (page faults) and 37k with 4 threads (their OpenMP teams oversubscribe the cores)
        self.read = read
        self.root, self.split = root, split
        self.path = root / f"{split}.u8"
        if self.format == "raw":
            # mode "c": a private, writable view (torch wants writable arrays); the file is never written
            self.data = np.memmap(root / f"{split}.u8", dtype=np.uint8, mode="c", shape=(n, 3, self.size, self.size))
            self.tensor = torch.from_numpy(self.data)
        else:
            self.data = np.memmap(root / f"{split}.jpeg", dtype=np.uint8, mode="r")
            self.offsets = np.load(root / f"{split}.offsets.npy")
        self.n = n
        self.decode_device: torch.device | None = None  # JPEG: decode batches there (a GPU: data.jpeg_decode)

    def __len__(self) -> int:
        return self.n

    def files(self) -> list[str]:
        """The source file of every image, in store order."""
        return json.loads((self.root / f"{self.split}.files.json").read_text())

    def __getitem__(self, idx: torch.Tensor | int) -> torch.Tensor:
        if isinstance(idx, int):
            return self[torch.tensor([idx])][0]
        return self.gather(torch.as_tensor(idx))

    def gather(self, ids: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
        """uint8 (len(ids), 3, S, S); ``pin_memory``: into page-locked memory for fast, asynchronous
        copies to a GPU (torch's caching host allocator reuses those buffers once their copy is done)."""
        ids = ids.long()
        if self.format == "raw":
            out = torch.empty((len(ids), 3, self.size, self.size), dtype=torch.uint8, pin_memory=pin_memory)
            if self.read == "pread":  # the kernel copies from the page cache: no page faults on a mapping
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    rows, nbytes, order = out.numpy(), 3 * self.size * self.size, ids.argsort().tolist()
                    for j, i in zip(order, ids[order].tolist()):  # ascending offsets: kinder to disks
                        os.preadv(fd, [memoryview(rows[j]).cast("B")], i * nbytes)
                finally:
                    os.close(fd)
                return out
            # one parallel memcpy per image; measured 12 GB/s into a reused buffer on 2 cores vs 4 for numpy
            return torch.index_select(self.tensor, 0, ids, out=out)
        blobs = [torch.from_numpy(np.array(self.data[self.offsets[i] : self.offsets[i + 1]])) for i in ids.tolist()]
        if self.decode_device is not None:  # one batched nvJPEG call; the bytes stay on the CPU (TorchCodec's rule)
            return torch.stack(jpeg_decoder(str(self.decode_device))(blobs))
        out = torch.stack(jpeg_decoder()(blobs))
        return out.pin_memory() if pin_memory else out


@functools.cache
def jpeg_decoder(device: str = "cpu") -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """uint8 JPEG byte tensors -> RGB uint8 (3, H, W) tensors on ``device`` (a CUDA device: nvJPEG). TorchCodec's
    decoder, the maintained one (torchvision 0.29 deprecates its own in its favour); torchvision's where
    TorchCodec is absent or does not load against this PyTorch. On the CPU the two give the same pixels
    (libjpeg-turbo both; tested); measured on a 2-core AVX2 CPU (benchmarks/input_pipeline.py): 0.95-1.02x
    torchvision's rate decoding alone, 0.87-0.96x in the JPEG-store pipeline, about that machine's noise."""
    try:
        from torchcodec.decoders import decode_jpeg

        decode_jpeg([_tiny_jpeg()])  # loads its native library: fails here if it was built for another PyTorch

        def decode_tc(blobs: list[torch.Tensor]) -> list[torch.Tensor]:
            out = decode_jpeg(blobs, mode="RGB", device=device)  # (a list for a list; typed either)
            return out if isinstance(out, list) else [out]

        decode_tc.backend = "torchcodec"  # type: ignore[attr-defined]
        return decode_tc
    except Exception:  # noqa: BLE001 - ImportError, or a library built for another PyTorch (OSError, RuntimeError)
        import warnings

        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode

        def decode(blobs: list[torch.Tensor]) -> list[torch.Tensor]:
            with warnings.catch_warnings():  # its deprecation notice, once per batch otherwise
                warnings.simplefilter("ignore", DeprecationWarning)
                return tv_decode(blobs, mode=ImageReadMode.RGB, device=device)

        decode.backend = "torchvision"  # type: ignore[attr-defined]
        return decode


def _not_all_first(root: Path, split: str, manifest: dict[str, Any]) -> bool:
    """Whether the source files of a split whose labels are all 0 lie in other class folders than the first."""
    files = json.loads((root / f"{split}.files.json").read_text())
    return any(Path(f).parent.name != manifest["classes"][0] for f in files)


def open_store(path: str | Path, split: str) -> tuple[StoreImages, torch.Tensor, list[str]]:
    """A split's images, labels and class names; a damaged store (a file cut, removed or not its kind) is named."""
    root = Path(path)
    manifest = read_manifest(root)
    if not manifest.get("complete"):
        raise UserError(
            f"{root}: the store is incomplete; run `alexnet prepare` again with the same arguments to finish it"
        )
    if split not in manifest["splits"]:
        raise UserError(f"{root}: the store has no {split!r} split")
    try:
        labels = torch.from_numpy(np.load(root / f"{split}.labels.npy"))
        images = StoreImages(root, split, manifest)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"{root}: damaged store ({type(e).__name__}: {e}); prepare it again into a new folder"
        ) from None
    if (
        len(manifest["classes"]) > 1
        and len(labels) > 1
        and int(labels.max()) == 0
        and _not_all_first(root, split, manifest)
    ):
        # what a second prepare of a complete store wrote before it left finished splits alone (CHANGELOG.md, 0.2.0)
        raise UserError(f"{root}: every {split} label is 0 ({len(manifest['classes'])} classes): written by an "
                        "older `alexnet prepare` run twice; prepare the store again into a new folder")  # fmt: skip
    return images, labels, manifest["classes"]


def verify(path: str | Path) -> list[str]:
    """Files whose sha256 differs from the manifest's (empty list: the store is intact)."""
    root = Path(path)
    manifest = read_manifest(root)
    bad = []
    for info in manifest["splits"].values():
        for f, digest in info.get("sha256", {}).items():
            if not (root / f).is_file() or _sha256(root / f) != digest:
                bad.append(f)
    return bad


def _tiny_jpeg() -> torch.Tensor:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 150)).save(buf, format="JPEG")
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
