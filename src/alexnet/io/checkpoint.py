"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and finding the right file.

A checkpoint is a plain dict of tensors, numbers, strings and lists: the unwrapped model's
state_dict, optimizer, schedule, grad scaler, epoch and step, RNG state, the resolved config,
the variant and the class names. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .atomic import atomic_write, fsync_dir, temp_name

log = logging.getLogger("alexnet")
FORMAT = "alexnet-checkpoint/1"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the atomic writer: a crash at any moment leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as e:
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}") from None


def publish(ckpt: dict[str, Any], ckpt_dir: Path, step: int, names: tuple[str, ...], keep_last: int) -> Path:
    """Write ``step-N.pt`` once (atomically), then point ``last.pt`` (and ``best.pt``...) at it through
    hard links swapped in with an atomic rename: no extra writes, and a kill at any moment leaves every
    name pointing at a complete file. The newest ``keep_last`` step files are kept for fallback."""
    step_file = ckpt_dir / f"step-{step:08d}.pt"
    atomic_save(ckpt, step_file)
    for name in names:
        target = ckpt_dir / f"{name}.pt"
        tmp = temp_name(target)
        try:
            tmp.unlink(missing_ok=True)
            os.link(step_file, tmp)
            os.replace(tmp, target)
        except OSError:  # no hard links on this filesystem: write a copy
            tmp.unlink(missing_ok=True)
            atomic_save(ckpt, target)
    fsync_dir(ckpt_dir)  # the swapped names survive a power cut (the step file's bytes already did)
    steps = sorted(ckpt_dir.glob("step-*.pt"))
    for old in steps[: max(0, len(steps) - keep_last)]:
        old.unlink(missing_ok=True)
    return ckpt_dir / f"{names[0]}.pt" if names else step_file


# Files users give where weights are asked for, told apart by their first bytes (or a zip's member names)
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
_EXPORTED = "an export for other runtimes: pass the run or the .safetensors file it was exported from"
_IMPORT = (
    "convert it once with `alexnet import-weights {path} --out NAME.safetensors`, or, if this package "
    "exported it, pass the run it came from"
)
_OUR_ONNX = "; `alexnet predict` and `alexnet evaluate` run this package's ONNX exports as they are"
_IMAGE = (
    "an image, not weights: WEIGHTS is a run directory, a checkpoint, a .safetensors file or 'torchvision' "
    "(predict takes WEIGHTS first, then the images)"
)


# Top-level fields of the two protobuf files users hand around, by number (onnx.proto's ModelProto, caffe.proto's
# NetParameter): ONNX opens with ir_version (1, a varint) and holds a graph (7); Caffe's name (1) is a string and
# its layers are 100 (or 2 in the V1 format of bvlc_alexnet).
_ONNX_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26}
_CAFFE_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 100}


def _varint(f: Any) -> int | None:
    value = 0
    for shift in range(0, 64, 7):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def protobuf_kind(path: Path) -> str | None:
    """``"onnx"`` or ``"caffe"`` when the file parses, to its last byte, as the top level of an ONNX model or a
    Caffe net (protobuf has no signature: its field numbers and wire types are what tells), else None. Only the
    tags are read: each field's payload is skipped."""
    fields: dict[int, int] = {}
    size = path.stat().st_size
    with open(path, "rb") as f:
        for _ in range(10_000):  # a net has a few dozen top-level fields; no file makes this loop crawl
            if f.tell() >= size:
                break
            tag = _varint(f)
            if tag is None or tag >> 3 == 0:
                return None
            number, wire = tag >> 3, tag & 7
            if number not in _ONNX_FIELDS | _CAFFE_FIELDS:
                return None
            if wire == 0:
                if _varint(f) is None:
                    return None
            elif wire == 2:
                length = _varint(f)
                if length is None or f.tell() + length > size:
                    return None
                f.seek(length, os.SEEK_CUR)
            else:  # neither file has fixed-width fields at the top
                return None
            if fields.setdefault(number, wire) != wire:
                return None
        else:
            return None
    if fields.get(1) == 0 and fields.get(7) == 2 and fields.keys() <= _ONNX_FIELDS:
        return "onnx"
    if fields.get(1, 2) == 2 and (100 in fields or 2 in fields) and fields.keys() <= _CAFFE_FIELDS:
        return "caffe"
    return None


def foreign_kind(path: Path) -> str | None:
    """What ``path`` is when it is one of the files mistaken for weights, with what to do instead; else None.
    ``"safetensors"`` for a safetensors file of any name."""
    with open(path, "rb") as f:
        head = f.read(16)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".caffemodel"):
        if suffix == ".onnx":
            return f"an ONNX model: {_IMPORT.format(path=path)}{_OUR_ONNX}"
        return f"a Caffe model: {_IMPORT.format(path=path)}"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return _IMAGE
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/archive_format") for n in names):
            return f"a torch.export program (.pt2), {_EXPORTED}"
        if any("/code/" in n for n in names):
            return f"a TorchScript archive (loading it would run its code), {_EXPORTED}"
        return None  # torch.save's archive (or another zip: load says so)
    if len(head) > 8 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if (path.parent / "metrics.jsonl").is_file() and (path.parent / "checkpoints").is_dir():  # RUN/config.yaml...
        return f"a file of the run {path.parent}, not its weights: pass the run directory itself, {path.parent}"
    if kind := protobuf_kind(path):
        return f"{'an ONNX' if kind == 'onnx' else 'a Caffe'} model, by its content: {_IMPORT.format(path=path)}"
    if head.startswith(b"\xef\xbb\xbf") or (head and all(32 <= b < 127 or b in b"\t\n\r" for b in head)):
        return "a text file, not weights or a checkpoint"
    return None


def _not_a_checkpoint(path: Path, kind: str | None, why: str) -> UserError:
    if kind == "safetensors":
        return UserError(
            f"{path} is a safetensors weights file, not a training checkpoint (no optimizer or "
            f"schedule to resume): start a run from its weights with --weights {path}"
        )
    if kind:
        return UserError(f"{path} is {kind}")
    return UserError(f"{path}: corrupt or truncated checkpoint ({why})")


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by this package; anything else gets one clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint")
    # torch.save's format since PyTorch 1.6 (other files would reach the legacy unpickler), and not one of the
    # zip archives torch.load would reject after a warning, or decline with a riddle
    if (kind := foreign_kind(path)) or not zipfile.is_zipfile(path):
        raise _not_a_checkpoint(path, kind, "not a complete torch.save archive")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "Unsupported global" in str(e):  # a pickled callable: would run code
            raise UserError(f"{path}: refused to load: the file contains code or objects, not plain weights") from None
        raise UserError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an alexnet checkpoint (no '{FORMAT}' marker){_bare_state_dict(ckpt)}")
    return ckpt


def plain_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict of a bare one or of a pytorch/examples checkpoint (``{"arch", "state_dict", ...}``), with
    (Distributed)DataParallel's ``module.`` taken out of its keys; None when ``obj`` is neither."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        return None
    return {k.replace("module.", ""): v for k, v in obj.items()}


def _bare_state_dict(obj: Any) -> str:
    """The advice for a plain ``state_dict``: it has no variant, class names or preprocessing to go with it."""
    state = plain_state_dict(obj)
    if state is None:
        return ""
    if "arch" in obj:
        return (
            f"; it is a pytorch/examples imagenet checkpoint (arch {obj['arch']}): convert it once with "
            "`alexnet import-weights FILE --out NAME.safetensors`"
        )
    if "features.0.weight" in state and "classifier.6.weight" in state:  # torchvision's AlexNet
        return (
            "; it is a bare state_dict in torchvision's layout: convert it once with `alexnet import-weights "
            "FILE --out NAME.safetensors` (torchvision's own alexnet-owt-7be5be79.pth: pass 'torchvision')"
        )
    return "; it is a bare state_dict, without the variant, class names and preprocessing weights need here"


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Candidate files to resume from, newest first: last.pt, then step checkpoints."""
    ck = run_dir / "checkpoints"
    steps = sorted(ck.glob("step-*.pt"), reverse=True)  # zero-padded step numbers: newest first
    return [p for p in [ck / "last.pt", *steps] if p.is_file()]


def resolve(path_or_run: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file, or a run directory (its ``best.pt`` or ``last.pt``)."""
    p = Path(path_or_run)
    if p.is_dir():
        for name in ([prefer] if prefer else []) + ["best", "last"]:
            f = p / "checkpoints" / f"{name}.pt"
            if f.is_file():
                return f
        raise UserError(f"{p}: no checkpoints/best.pt or checkpoints/last.pt inside (is it a run directory?)")
    if not p.exists():
        raise UserError(f"no such run directory or checkpoint: {p}")
    return p


def load_for_resume(path_or_run: str | Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run; a corrupt one is named and the previous one used."""
    p = Path(path_or_run)
    if not p.exists():
        raise UserError(f"no such run directory or checkpoint: {p}")
    candidates = run_checkpoints(p) if p.is_dir() else [p]
    if not candidates:
        raise UserError(f"{p}: no checkpoints to resume from (a run stopped before its first save): start it "
                        f"again with --out {p}")  # fmt: skip
    errors = []
    for i, c in enumerate(candidates):
        try:
            return load(c), c
        except UserError as e:
            if "refused to load" in str(e) or len(candidates) == 1:
                raise
            errors.append(str(e))
            if i + 1 < len(candidates):
                log.warning("%s; trying the previous checkpoint", e)
    raise UserError("no readable checkpoint: " + "; ".join(errors))


def run_dir_of(checkpoint_path: Path) -> Path:
    """``RUN/checkpoints/x.pt`` -> ``RUN``."""
    return checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else checkpoint_path.parent
