"""Run logging on rank 0: metrics.jsonl (one object per epoch), the trackers fed from it, and the process's
log setup."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io.atomic import atomic_write_text
from ..io.yaml_text import parse_yaml
from ..parallel.distributed import launch_rank
from ..trackers import Trackers

log = logging.getLogger("alexnet")


class RunLogger:
    """metrics.jsonl, one row per epoch with the optimizer step that ended it, and the run's trackers
    (trackers/: TensorBoard, MLflow, W&B), which ``open`` starts once the run's files are written; until
    then rows go to metrics.jsonl alone. Rank 0 only: elsewhere ``run_dir`` is None and nothing is written."""

    def __init__(self, run_dir: Path | None, start_step: int = 0) -> None:
        self.run_dir, self.start_step = run_dir, start_step
        self.trackers: Trackers | None = None
        self.last_plan: dict[str, Any] | None = None

    def open(self, config: dict[str, Any], report_to: list[str], resuming: bool) -> None:
        """Start the trackers ``report_to`` names with the run's resolved ``config``; they are sent the rows of
        metrics.jsonl they miss (a resume's catch-up) and the --budget plan made so far."""
        if self.run_dir is None or not report_to:
            return
        self.trackers = Trackers(self.run_dir, report_to, self.start_step, resuming)
        self.trackers.start(config, read_metrics(self.run_dir))
        if self.last_plan is not None:
            self.trackers.plan(self.last_plan)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        if self.run_dir is None:
            return
        row = {"epoch": row["epoch"], "step": step, **row}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.epoch(row)

    def plan(self, plan: dict[str, Any]) -> None:
        """A --budget plan, as plan.json holds it (at the plan and at each check)."""
        self.last_plan = plan
        if self.trackers is not None:
            self.trackers.plan(plan)

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
        if self.trackers is not None:
            self.trackers.step(step, {"step/train_loss": loss, "step/lr": lr})

    def close(self, code: int = 0) -> None:
        """``code``: how the run ended (0, 1 failed, 128 + N stopped by signal N), as the trackers record it."""
        if self.trackers is not None:
            self.trackers.close(code)
            self.trackers = None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """RUN/config.yaml, the resolved config training wrote; a file edited into something else is one error."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path}: missing (training writes it; `alexnet train --resume {run_dir}` writes it again)")
    cfg = parse_yaml(path.read_text(errors="replace"), str(path))
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("model", "data", "train")):
        raise UserError(f"{path}: not a run's config (training writes its model, data and train sections)")
    return cfg


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
