"""TensorBoard: event files in RUN/tensorboard, written in the training process (the writer queues them
itself); the default tracker, nothing to install."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("alexnet")


class TensorBoard:
    """Every scalar is plotted against the optimizer step (an epoch's row at the step that ended it). A run
    starting at ``start_step`` (0, or a resumed checkpoint's) hides what a stopped run logged after it: the
    writer's purge_step marks a restart, and TensorBoard drops the earlier events of every tag from that step
    on (those steps are trained again; a start that failed is hidden the same way)."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            log.warning("tensorboard not available; skipping event files")

    def epoch(self, row: dict[str, Any]) -> None:
        if self.tb is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, row["step"])
        self.tb.flush()

    def step(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
