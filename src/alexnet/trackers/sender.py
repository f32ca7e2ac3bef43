"""One background thread per remote tracker (MLflow, W&B): training only puts records in its queue, never
waits on a server. A tracker that fails (a server gone, a refused value) is said once and dropped; so is
one that falls MAX_PENDING records behind. metrics.jsonl, written before anything is queued, loses nothing."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .ledger import Ledger

log = logging.getLogger("alexnet")
MAX_PENDING = 10_000  # records waiting (an epoch row or a log line each): hours of log lines at log_every=20
BATCH = 200  # records sent in one request at most


class Remote(Protocol):
    """A tracker run as the sender drives it; every method may raise (the tracker is then dropped)."""

    name: str

    def start(self, entry: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
        """Create the tracker run, or continue the one ``entry`` (its trackers.json entry) names; returns
        the entry to store (its ids)."""
        ...

    def delivered(self) -> tuple[int, int] | None:
        """A continued run's (last epoch row, last step line) as the tracker itself holds them, if it can say."""
        ...

    def metrics(self, items: list[tuple[dict[str, float], int]]) -> None: ...  # (values, optimizer step)

    def tags(self, tags: dict[str, Any]) -> None: ...

    def files(self, paths: list[Path]) -> None: ...

    def finish(self, code: int) -> None: ...  # the run's exit code: 0 finished, 128 + N stopped by signal N


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class Channel:
    """The queue and thread of one Remote. Records go out in order, so after each request the ledger can
    say exactly what the tracker holds (``Ledger.marks``)."""

    def __init__(self, remote: Remote, ledger: Ledger) -> None:
        self.remote, self.ledger, self.name = remote, ledger, remote.name
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.dead = False
        self.sent_epoch = self.sent_step = 0
        self._said = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"alexnet-{self.name}", daemon=True)

    def start(self, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Open the tracker run; then send ``rows`` (metrics.jsonl as the run starts) that it does not hold."""
        self.put("start", config, rows)
        self.thread.start()

    def put(self, *record: Any) -> None:
        if self.dead:
            return
        if self.queue.qsize() >= MAX_PENDING:
            self.fail(f"{MAX_PENDING} records waiting to be sent (it cannot keep up)")
            return
        self.queue.put(record)

    def join(self, deadline: float) -> None:
        """Wait for what is queued (the finish last) until ``deadline`` (time.monotonic()), then leave it."""
        self.queue.put(("stop",))
        if self.thread.is_alive():
            self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive() and not self.dead:
            self.fail(f"still sending when the run ended ({self.queue.qsize()} records left unsent)")

    def fail(self, reason: str) -> None:
        """Drop this tracker, said once."""
        with self._said:
            if self.dead:
                return
            self.dead = True
        log.warning("%s stopped receiving this run: %s; training goes on, and metrics.jsonl has every row (a "
                    "resume sends the tracker the rows it missed)", self.name, reason)  # fmt: skip

    def _run(self) -> None:
        held: tuple[Any, ...] | None = None
        while True:
            record, held = held or self.queue.get(), None
            kind = record[0]
            if kind == "stop":
                return
            if self.dead:
                continue
            try:
                if kind in ("epoch", "step"):
                    batch = [record]
                    while len(batch) < BATCH:  # what queued up meanwhile goes in the same request
                        try:
                            more = self.queue.get_nowait()
                        except queue.Empty:
                            break
                        if more[0] not in ("epoch", "step"):
                            held = more
                            break
                        batch.append(more)
                    self._send(batch)
                elif kind == "start":
                    self._start(*record[1:])
                else:
                    getattr(self.remote, kind)(*record[1:])
            except Exception as e:  # noqa: BLE001 - whatever a tracker raises, training goes on
                self.fail(f"{kind} failed ({one_line(e)})")

    def _start(self, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        entry = self.ledger.get(self.name)
        self.ledger.update(self.name, **self.remote.start(entry, config))
        self.sent_epoch, self.sent_step = self.ledger.marks(self.name)
        held = self.remote.delivered() if entry is not None else None
        if held is not None:  # a kill between a request and the ledger's write: the tracker knows better
            self.sent_epoch, self.sent_step = max(self.sent_epoch, held[0]), max(self.sent_step, held[1])
        missed = [r for r in rows if r.get("epoch", 0) > self.sent_epoch]
        if [r for r in missed if "step" not in r]:
            log.info("%s: rows of metrics.jsonl written without their step (by an older alexnet) are not sent",
                     self.name)  # fmt: skip
        self._send([("epoch", r) for r in missed if "step" in r])

    def _send(self, batch: list[tuple[Any, ...]]) -> None:
        """Metrics records in order, less those the tracker holds already (a resume trains their steps again)."""
        epoch, step, items = self.sent_epoch, self.sent_step, []
        for kind, *rest in batch:
            if kind == "epoch" and rest[0]["epoch"] > epoch:
                row = rest[0]
                values = {k: float(v) for k, v in row.items() if k != "step" and _number(v)}
                items.append((values, int(row["step"])))
                epoch = row["epoch"]
            elif kind == "step" and rest[0] > step:
                items.append((rest[1], rest[0]))
                step = rest[0]
        if items:
            self.remote.metrics(items)
            self.sent_epoch, self.sent_step = epoch, step
            self.ledger.update(self.name, sent_epoch=epoch, sent_step=step)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
