"""Run logging on rank 0: metrics.jsonl (one object per epoch), TensorBoard, progress display."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("alexnet")


class RunLogger:
    def __init__(self, run_dir: Path | None, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                log.warning("tensorboard not available; skipping event files")

    def epoch(self, row: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.tb is not None:
            self.tb.add_scalar("step/train_loss", loss, step)
            self.tb.add_scalar("step/lr", lr, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A tqdm bar on a terminal; plain log lines every ``every`` steps otherwise (CI logs, files)."""

    def __init__(self, total: int, desc: str, enabled: bool, every: int = 20, initial: int = 0) -> None:
        self.enabled = enabled
        self.total, self.desc, self.every = total, desc, every
        self.n = initial
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True)

    def update(self, **stats: Any) -> None:
        """``stats`` values may be callables: evaluated only when shown (``loss.item()`` syncs a GPU)."""
        self.n += 1
        if not self.enabled:
            return
        shown = self.bar is not None or (self.every and (self.n % self.every == 0 or self.n == self.total))
        if not shown:
            return
        stats = {k: v() if callable(v) else v for k, v in stats.items()}
        text = {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in stats.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            self.bar.update(1)
        elif self.every and (self.n % self.every == 0 or self.n == self.total):
            fields = " ".join(f"{k}={v}" for k, v in text.items())
            log.info("%s %d/%d %s", self.desc, self.n, self.total, fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirection and test capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbose: bool = True) -> None:
    """INFO to stderr on rank 0 (WARNING elsewhere or when ``verbose`` is off), once per process."""

    log = logging.getLogger("alexnet")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    rank = int(os.environ.get("RANK", "0"))
    log.setLevel(logging.INFO if verbose and rank == 0 else logging.WARNING)
