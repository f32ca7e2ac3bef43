"""Progress display: a tqdm bar on a terminal, plain log lines every N steps otherwise (CI logs, files).

The bar's count moves every step (host work only); its figures (loss, accuracy, speed) and the plain lines are
written at the training loop's sync steps (train.sync_every), where the host reads the device anyway.
"""

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
        self.lined = initial  # the step of the last plain line
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True)

    def set_total(self, total: int) -> None:
        """The epoch's length as planned now (a --budget check may lengthen or shorten the run mid-epoch)."""
        if total != self.total:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()

    def advance(self) -> None:
        """One more step done (reads nothing from the device)."""
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def due(self) -> bool:
        """Whether ``show`` would write anything now: the bar's figures, or a plain line (``every`` steps since the
        last one, or the epoch's last step)."""
        if not self.enabled:
            return False
        if self.bar is not None:
            return True
        return bool(self.every) and (self.n // self.every > self.lined // self.every or self.n == self.total)

    def show(self, **stats: Any) -> None:
        """The figures of this step (host numbers), as the bar's postfix or a plain line when ``due``."""
        if not self.due():
            return
        text = {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in stats.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
            return
        self.lined = self.n
        log.info("%s %d/%d %s", self.desc, self.n, self.total, " ".join(f"{k}={v}" for k, v in text.items()))

    def update(self, **stats: Any) -> None:
        """``advance`` and ``show``, for loops whose figures are host numbers (callables are called only when
        something is shown)."""
        self.advance()
        if self.due():
            self.show(**{k: v() if callable(v) else v for k, v in stats.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
