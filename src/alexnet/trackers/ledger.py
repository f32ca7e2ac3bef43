"""trackers.json in the run directory: each tracker's run (its ids, so a resume continues it) and what it was
sent, so that a resume sends every metrics row to it exactly once.

A tracker run holds what its sender delivered in order: after epoch row ``epoch`` and step line ``step``
nothing older is missing. A resume sends the rows of metrics.jsonl after ``epoch`` (those a kill or a server
that was gone kept from it) and skips what the run logs again up to there (the steps after the checkpoint
that a killed run had already sent)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text

log = logging.getLogger("alexnet")
FILE = "trackers.json"


class Ledger:
    """Shared by the senders of one run (each writes its own entry); every change is written at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / FILE
        self._lock = threading.Lock()
        self.data: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                log.warning("%s is not readable: trackers start new runs", self.path)

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self.data.get(name)
            return dict(entry) if isinstance(entry, dict) else None

    def marks(self, name: str) -> tuple[int, int]:
        """(the last epoch row, the last step line) this tracker has: 0 when none."""
        entry = self.get(name) or {}
        return int(entry.get("sent_epoch", 0)), int(entry.get("sent_step", 0))

    def update(self, name: str, **values: Any) -> None:
        with self._lock:
            self.data[name] = {**self.data.get(name, {}), **values}
            atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")

    def forget(self) -> None:
        with self._lock:
            self.data = {}
            self.path.unlink(missing_ok=True)
