"""`alexnet figures`: the paper's Figures 3 and 4 for your network, training curves, confusion (plots.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.runlog import setup_logging
from ..errors import UserError
from ..inference.plots import DEFAULT_FIGURES, make_figures
from ..io.checkpoint import run_dir_of
from ..io.weights import load_weights
from ..parallel.distributed import pick_device


def run_figures(weights: str, out: Path, which: str | None, data: str | None = None, device: str = "auto",
                max_val: int = 2000, max_train: int = 5000, workers: int = 0) -> int:  # fmt: skip
    """Write the ``which`` figures (comma-separated) of ``weights`` into ``out`` and print their paths."""
    setup_logging(verbose=False)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --out names the folder the figures go in")
    dev = pick_device(device)
    w = load_weights(weights, dev)
    src = Path(weights)
    run_dir = src if src.is_dir() else (run_dir_of(src) if (run_dir_of(src) / "metrics.jsonl").is_file() else None)
    if which is None:  # the default set; a weights file has no training curves to draw
        names = [f for f in DEFAULT_FIGURES if f != "curves" or run_dir is not None]
        if run_dir is None:
            print(f"curves: skipped, {weights} is not a run directory (no metrics.jsonl)", file=sys.stderr)
    else:
        names = [x.strip() for x in which.split(",") if x.strip()]
    for path in make_figures(w, run_dir, data, out, names, dev, max_val, max_train, workers):
        print(path)
    return 0
