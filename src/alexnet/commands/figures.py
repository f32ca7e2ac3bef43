"""`alexnet figures`: the paper's Figures 3 and 4 for your network, training curves, confusion (plots.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.runlog import setup_logging
from ..errors import UserError
from ..inference.plots import DEFAULT_FIGURES, figure_files, make_figures
from ..io.checkpoint import run_dir_of
from ..io.weights import load_weights
from ..parallel.distributed import pick_device


def run_figures(weights: str, out: Path, which: str | None, data: str | None = None, device: str = "auto",
                max_val: int = 2000, max_train: int = 5000, workers: int = 0, force: bool = False) -> int:  # fmt: skip
    """Write the ``which`` figures (comma-separated) of ``weights`` into ``out`` and print their paths; files
    already there are replaced only with ``force``."""
    setup_logging(verbose=False)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out names the folder the figures go in")
    src = Path(weights)
    run_dir = src if src.is_dir() else (run_dir_of(src) if (run_dir_of(src) / "metrics.jsonl").is_file() else None)
    names = None if which is None else [x.strip() for x in which.split(",") if x.strip()]
    default = [f for f in DEFAULT_FIGURES if f != "curves" or run_dir is not None]  # a weights file has no curves
    taken = [p for p in figure_files(out, default if names is None else names) if p.exists()]  # names checked too
    if taken and not force:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UserError(f"{taken[0]} exists{more}; pass --force to overwrite, or another --out")
    dev = pick_device(device)
    w = load_weights(weights, dev)
    if names is None:
        names = default
        if run_dir is None:
            print(f"curves: skipped, {weights} is not a run directory (no metrics.jsonl)", file=sys.stderr)
    for path in make_figures(w, run_dir, data, out, names, dev, max_val, max_train, workers):
        print(path)
    return 0
