"""Progress display: a tqdm bar on a terminal, plain log lines every N steps otherwise (CI logs, files)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("alexnet")


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
