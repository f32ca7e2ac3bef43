"""Run logging on rank 0: metrics.jsonl (one object per epoch), TensorBoard, and the process's log setup."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .distributed import launch_rank
from .errors import UserError

log = logging.getLogger("alexnet")


class RunLogger:
    """Every TensorBoard scalar is plotted against the optimizer step (an epoch's row at the step that ended it).
    A run starting at ``start_step`` (0, or a resumed checkpoint's) hides what a stopped run logged after it:
    the writer's purge_step marks a restart, and TensorBoard drops the earlier events of every tag from
    that step on (those steps are trained again; a start that failed is hidden the same way)."""

    def __init__(self, run_dir: Path | None, start_step: int = 0, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                log.warning("tensorboard not available; skipping event files")

    def epoch(self, row: dict[str, Any], step: int) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def keep_epochs(self, last_epoch: int) -> None:
        """On resume: drop rows of epochs after the checkpoint's (written before a kill that came before the
        checkpoint) and a torn last line; the resumed run writes those epochs again, once."""
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").is_file():
            return
        rows = []
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("epoch", 0) <= last_epoch:
                rows.append(line)
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(r + "\n" for r in rows))

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.tb is not None:
            self.tb.add_scalar("step/train_loss", loss, step)
            self.tb.add_scalar("step/lr", lr, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows; a torn last line (a row being written as a run trains, or a kill mid-write: the next
    resume drops it) is left out, and any other line that is not a row is named."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {i} is not a metrics row (one JSON object per line)")
        rows.append(row)
    return rows


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
    log.setLevel(logging.INFO if verbose and launch_rank() == 0 else logging.WARNING)
