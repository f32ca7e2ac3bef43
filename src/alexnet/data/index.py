"""The file list of an image folder split, built in parallel and cached, so that a 1.28-million-file ImageNet
costs its listing once, not on every start, rank and resume.

The cache is one JSON file: ``SPLIT/.alexnet-index.json`` when the data folder is writable, else
``$XDG_CACHE_HOME/alexnet/index-<hash of the path>.json`` (``~/.cache``). It records the class folders and the
modification time (ns) of every directory below them; it is used only when the split folder still has exactly
those class folders and every directory still has its time (adding, removing or renaming a file changes its
directory's), else rebuilt, never trusted. As in git's "racy" rule, a directory whose time is within
RACY_NS of the listing's own time is not trusted either (file systems stamp times with a coarse clock, so a
file added just after the listing could leave its directory's time unchanged). A file rewritten in place keeps
its directory's time: such a file is caught when it is decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..io.atomic import atomic_write_bytes
from .images import is_image_path

log = logging.getLogger("alexnet")
CACHE_NAME = ".alexnet-index.json"
VERSION = 1
RACY_NS = 2_000_000_000


@dataclass
class Listing:
    """One split folder: class folder names, and per class the image files (paths relative to the class
    folder, in sorted order) and the files refused by their extension."""

    classes: list[str]
    files: dict[str, list[str]]
    not_images: dict[str, list[str]]
    dirs: dict[str, int]  # directory below the split folder (relative path) -> st_mtime_ns


def io_threads() -> int:
    """Listing is I/O: more threads than cores help on network file systems; 4 per core, 8 to 32."""
    return max(8, min(32, 4 * (os.cpu_count() or 2)))


def _list_class(split_dir: Path, cls: str) -> tuple[list[str], list[str], dict[str, int]]:
    """One class folder, recursively, with os.scandir (file types come with the listing: no stat per file)."""
    images: list[str] = []
    others: list[str] = []
    dirs: dict[str, int] = {}
    pending = [("", os.path.join(split_dir, cls))]
    while pending:
        rel_top, top = pending.pop()
        dirs[f"{cls}{os.sep}{rel_top}".rstrip(os.sep)] = os.stat(top).st_mtime_ns
        with os.scandir(top) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):  # no loops through linked folders
                    pending.append((f"{rel_top}{e.name}{os.sep}", e.path))
                elif not e.name.startswith(".") and e.is_file():
                    (images if is_image_path(e.name) else others).append(rel_top + e.name)
    key = lambda r: r.split(os.sep)  # noqa: E731  pathlib's order: by path component
    return sorted(images, key=key), sorted(others, key=key), dirs


def build(split_dir: Path, classes: list[str]) -> Listing:
    """List every class folder, in parallel threads."""
    with ThreadPoolExecutor(io_threads()) as ex:
        parts = list(ex.map(lambda c: _list_class(split_dir, c), classes))
    dirs: dict[str, int] = {}
    for _, _, d in parts:
        dirs.update(d)
    return Listing(classes, {c: p[0] for c, p in zip(classes, parts)}, {c: p[1] for c, p in zip(classes, parts)}, dirs)


def cache_paths(split_dir: Path) -> list[Path]:
    """Where the index may live: beside the data, then the user's cache directory."""
    key = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:16]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet" / f"index-{key}.json"
    return [split_dir / CACHE_NAME, user]


def load_cached(split_dir: Path, classes: list[str]) -> Listing | None:
    """The cached listing if one exists for these class folders and every directory it recorded is unchanged."""
    for path in cache_paths(split_dir):
        try:
            raw = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if raw.get("version") != VERSION or raw.get("root") != str(split_dir.resolve()):
            continue
        if raw.get("classes") != classes:
            log.info("%s: its class folders changed since its index was written: listing it again", split_dir)
            continue
        try:
            fresh = all(os.stat(split_dir / d).st_mtime_ns == t < raw["built_ns"] - RACY_NS
                        for d, t in raw["dirs"].items())  # fmt: skip
        except (OSError, KeyError, TypeError):
            fresh = False
        if fresh:
            return Listing(raw["classes"], raw["files"], raw["not_images"], raw["dirs"])
        log.info("%s changed since its index was written: listing it again", split_dir)
    return None


def save(split_dir: Path, listing: Listing, built_ns: int) -> Path | None:
    """Write the listing (started at ``built_ns``, time.time_ns) to the first writable cache location; None when
    none is writable."""
    data = json.dumps({"version": VERSION, "root": str(split_dir.resolve()), "built_ns": built_ns,
                       "classes": listing.classes,
                       "files": listing.files, "not_images": listing.not_images, "dirs": listing.dirs},
                      separators=(",", ":")).encode()  # fmt: skip
    for path in cache_paths(split_dir):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
            return path
        except OSError:
            continue
    return None
