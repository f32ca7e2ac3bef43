"""ImageNet's validation set, sorted into class folders: ``val/ILSVRC2012_val_00000001.JPEG ...`` (flat, as
ILSVRC-2012 ships it) plus its labels -> ``OUT/<wnid>/ILSVRC2012_val_00000001.JPEG``, the layout training,
evaluation and ``prepare`` read. The labels come as either

- Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the prediction string is
  the wnid), or
- the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (line i: the ILSVRC2012_ID of image i, 1..1000) with
  its class order: the devkit's ``meta.mat`` or a text file of the 1000 wnids in ILSVRC2012_ID order.

Files are hard-linked (another folder on the same disk) or moved (in place, as pytorch/examples' valprep.sh
does), never copied unless asked. Everything is checked before anything is touched: a label file of an unknown
format, images without a label, labels without an image, or another file where an image would go get one line
and change nothing. Run again after a stop, it places only what an earlier run left.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError
from ..io.atomic import TEMP_GLOB, temp_name

log = logging.getLogger("alexnet")
WNID = re.compile(r"^n\d{8}$")


def _text(path: Path, what: str) -> str:
    """A label or synsets file's text (UTF-8; a byte-order mark, as Excel writes one, is dropped), or one line
    naming the file for a directory, a missing file or one that is not text."""
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a {what}")
    if not path.is_file():
        raise UserError(f"no such {what}: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text {what} (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                        "UTF-8)") from None  # fmt: skip
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror})") from None


def read_labels(labels: Path, synsets: Path | None) -> dict[str, str]:
    """file stem (``ILSVRC2012_val_00000001``) -> wnid."""
    text = _text(labels, "label file")
    order = None if synsets is None else read_synsets(synsets)  # read when given, used or not: a wrong path is named
    if text.startswith("ImageId,PredictionString"):
        out = {}
        reader = csv.reader(io.StringIO(text, newline=""))
        next(reader)
        for row in filter(None, reader):  # (a blank line is an empty row)
            wnid = (row[1] if len(row) > 1 else "").split(" ")[0]
            if not WNID.match(wnid):
                raise UserError(f"{labels}, line {reader.line_num}: {wnid!r} is not a WordNet id like n01440764")
            out[row[0]] = wnid
    elif re.match(r"^\d+\s*\n", text):
        if order is None:
            raise UserError(f"{labels} holds class numbers: pass --synsets (the devkit's meta.mat, or a text file of "
                            "the 1000 wnids in ILSVRC2012_ID order)")  # fmt: skip
        ids = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not (re.fullmatch(r"[0-9]+", line.strip()) and 1 <= int(line) <= len(order)):
                raise UserError(f"{labels}, line {n}: {line.strip()[:40]!r} is not a class number 1..{len(order)}")
            ids += [int(line)] if line.strip() else []
        out = {f"ILSVRC2012_val_{n:08d}": order[i - 1] for n, i in enumerate(ids, 1)}
    else:
        raise UserError(f"{labels}: unknown label format (expected Kaggle's LOC_val_solution.csv or the devkit's "
                        "ILSVRC2012_validation_ground_truth.txt)")  # fmt: skip
    if not out:
        raise UserError(f"{labels}: no labels in it")
    return out


def read_synsets(path: Path) -> list[str]:
    """The devkit's class order: meta.mat's synsets (ILSVRC2012_ID 1..1000 are the leaves), or a wnid per line."""
    if path.suffix == ".mat" and path.is_file():
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError

        try:
            syn = loadmat(str(path), squeeze_me=True)["synsets"]
            pairs = sorted((int(s["ILSVRC2012_ID"]), str(s["WNID"])) for s in syn)
        except (KeyError, ValueError, TypeError, IndexError, NotImplementedError, MatReadError) as e:
            raise UserError(f"{path}: not the devkit's meta.mat ({e})") from None
        order = [w for i, w in pairs if 1 <= i <= 1000]
    else:
        order = [line.split()[0] for line in _text(path, "synsets file").splitlines() if line.strip()]
    if not order or not all(WNID.match(w) for w in order) or len(set(order)) != len(order):
        raise UserError(f"{path}: expected distinct wnids (n01440764, ...), one per class in ILSVRC2012_ID order")
    return order


def prepare_val(val: str, labels: str, out: str | None = None, synsets: str | None = None,
                mode: str | None = None) -> int:  # fmt: skip
    """Sort ``val`` into ``out`` (default: in place) class folders; ``mode``: link | move | copy (default: move in
    place, link elsewhere)."""
    src = Path(val)
    if not src.is_dir():
        raise UserError(f"no such directory: {src}")
    dst = Path(out) if out else src
    if dst.exists() and not dst.is_dir():
        raise UserError(f"--out {dst} is a file; it names the folder the class folders go in")
    mode = mode or ("move" if dst.resolve() == src.resolve() else "link")
    images = sorted(p.name for p in src.iterdir() if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    table = read_labels(Path(labels), Path(synsets) if synsets else None)
    stems = {Path(n).stem: n for n in images}
    placed = _placed(dst, table, stems, src, mode)  # by an earlier run, perhaps stopped half-way: not done again
    unlabelled = sorted(set(stems) - set(table))
    missing = sorted(set(table) - set(stems) - set(placed))
    if unlabelled or missing:
        raise UserError(f"{src} has {len(images)} images and {labels} labels {len(table)}: "
                        + (f"{len(unlabelled)} images without a label (e.g. {stems[unlabelled[0]]})" if unlabelled else "")
                        + ("; " if unlabelled and missing else "")
                        + (f"{len(missing)} labels without an image (e.g. {missing[0]})" if missing else ""))  # fmt: skip
    todo = {s: n for s, n in stems.items() if s not in placed}
    clash = next((dst / table[s] / n for s, n in todo.items() if (dst / table[s] / n).exists()), None)
    if clash is not None:
        raise UserError(f"{clash} exists and is not {src / stems[clash.stem]}; the output must not hold other files")
    _mkdir(dst)
    if mode == "link" and todo:
        _probe_link(src / next(iter(todo.values())), dst)
    for wnid in sorted(set(table.values())):
        _mkdir(dst / wnid)
        for stale in (dst / wnid).glob(TEMP_GLOB):  # a copy a stopped run left half-written
            stale.unlink()
    for stem, name in todo.items():
        _place(src / name, dst / table[stem] / name, mode)
    n, k = len(table), len(set(table.values()))
    done = "already sorted, nothing to do" if not todo else f"{len(placed)} of them by an earlier run" if placed else ""
    print(f"{dst}: {n} images sorted into {k} class folders ({mode}{'; ' + done if done else ''})")
    return 0


def _placed(dst: Path, table: dict[str, str], stems: dict[str, str], src: Path, mode: str) -> dict[str, Path]:
    """The labelled images an earlier run already put in their class folder: moved (gone from ``src``), linked
    (the same file) or copied (under its name only once complete)."""
    out = {}
    for wnid in set(table.values()):
        folder = dst / wnid
        for p in folder.iterdir() if folder.is_dir() else []:
            if p.is_file() and table.get(p.stem) == wnid:
                a = src / stems[p.stem] if p.stem in stems else None
                if a is None or (os.path.samefile(a, p) if mode == "link" else mode == "copy"):
                    out[p.stem] = p
    return out


def _mkdir(folder: Path) -> None:
    """``folder`` and its parents, or one line naming the one that cannot be made (mkdir in /proc or /sys says
    ENOENT, "no such file", about a folder whose parent is there)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        made = Path(e.filename or folder)
        why = "the file system there takes no new folders" if made.parent.is_dir() and not made.exists() else e.strerror
        raise UserError(f"cannot create the folder {made} ({why}): choose another --out") from None


def _probe_link(a: Path, dst: Path) -> None:
    """Hard links work from ``a``'s disk into ``dst``, or one clear line before any file is placed."""
    probe = dst / ".alexnet-link-probe"
    try:
        probe.unlink(missing_ok=True)
        os.link(a, probe)
    except OSError as e:
        raise UserError(f"cannot hard-link {a} into {dst} ({e.strerror}): use --mode move, or --mode copy for an "
                        "output on another disk") from None  # fmt: skip
    probe.unlink()


def _place(a: Path, b: Path, mode: str) -> None:
    if mode == "move":
        os.replace(a, b)
    elif mode == "copy":  # under its name only once complete: a run stopped mid-copy leaves a temporary
        tmp = temp_name(b)
        shutil.copy2(a, tmp)
        os.replace(tmp, b)
    else:
        os.link(a, b)
