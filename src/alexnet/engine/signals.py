"""Signals: the main process turns SIGTERM/SIGINT into a flag the training loop checks; worker processes
leave them alone.

SLURM pre-emption, ``kill -TERM -PGID`` and container stops signal every process of the job, data-loader
workers included. If the workers died of it first, the main process would crash with "DataLoader worker
... is killed by signal" before it could save; so workers ignore SIGTERM and SIGINT and the main process
saves, says how to resume, and then shuts them down.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(*_args: Any) -> None:
    """``worker_init_fn`` / pool ``initializer``: this worker ignores SIGTERM and SIGINT."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint at the next check and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for s in STOP_SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
