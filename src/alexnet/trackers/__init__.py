"""Experiment trackers (``train.report_to``, HF Trainer's ``report_to``): TensorBoard, MLflow, W&B, each fed
what RunLogger writes to metrics.jsonl, the source of truth: the resolved config once (params), every epoch
row at the optimizer step that ended it under its metrics.jsonl names, the log lines (``step/train_loss``,
``step/lr``), a --budget run's plan (tags ``plan.*`` and plan.json), and config.yaml, metrics.jsonl and
plan.json as files at the end (also when a signal stops the run). Rank 0 only; RunLogger is called where
the engine already has the values on the host.

MLflow and W&B are optional extras and send from a thread each (sender.py): training never waits on them, a
tracker that fails is said once and dropped, and the run ends after waiting at most FLUSH_S for them.
Their runs are named in RUN/trackers.json, so `alexnet train --resume RUN` continues the same ones."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..errors import missing_extra
from .ledger import Ledger
from .sender import Channel, Remote, one_line
from .tensorboard_run import TensorBoard

log = logging.getLogger("alexnet")
REMOTE = ("mlflow", "wandb")  # each its module (mlflow_run, wandb_run) and the extra that installs it
FLUSH_S = 30.0  # at the end of a run, what the trackers still have to send is waited for this long at most
ARTIFACTS = ("config.yaml", "metrics.jsonl", "plan.json")


def check_installed(names: list[str]) -> None:
    """Before any work starts: each remote tracker asked for is importable, else one line says how to get it."""
    for name in names:
        if name in REMOTE and importlib.util.find_spec(name) is None:
            raise missing_extra(f"train.report_to: {name}", name)


def _remote(name: str, run_dir: Path) -> Remote:
    if name == "mlflow":
        from .mlflow_run import HTTP_DEFAULTS, MlflowRun

        for key, value in HTTP_DEFAULTS.items():  # here, in the main thread: the environment is not thread-safe
            os.environ.setdefault(key, value)
        return MlflowRun(run_dir)
    from .wandb_run import WandbRun

    return WandbRun(run_dir)


def plan_tags(plan: dict[str, Any]) -> dict[str, Any]:
    """A --budget plan's figures (engine/budget.py Plan) as ``plan.KEY``; its checks counted."""
    tags = {f"plan.{k}": v for k, v in plan.items() if k not in ("costs", "checks")}
    return tags | {"plan.checks": len(plan.get("checks", []))}


class Trackers:
    """The trackers of one run on rank 0: TensorBoard in this thread, the remote ones through a Channel each."""

    def __init__(self, run_dir: Path, names: list[str], start_step: int, resuming: bool) -> None:
        self.run_dir = run_dir
        self.tb = TensorBoard(run_dir, start_step) if "tensorboard" in names else None
        ledger = Ledger(run_dir)
        if not resuming:  # a new start into a directory whose earlier start failed: new tracker runs
            ledger.forget()
        self.channels = [Channel(_remote(n, run_dir), ledger) for n in names if n in REMOTE]

    def start(self, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        for c in self.channels:
            c.start(config, rows)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.tb is not None:
            self.tb.epoch(row)
        for c in self.channels:
            c.put("epoch", row)

    def step(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            self.tb.step(step, values)
        for c in self.channels:
            c.put("step", step, values)

    def plan(self, plan: dict[str, Any]) -> None:
        for c in self.channels:
            c.put("tags", plan_tags(plan))
            c.put("files", [self.run_dir / "plan.json"])

    def close(self, code: int) -> None:
        """The run's files, its end (``code``: 0, 1 failed, 128 + N stopped by signal N), a bounded wait."""
        files = [self.run_dir / name for name in ARTIFACTS if (self.run_dir / name).is_file()]
        for c in self.channels:
            c.put("files", files)
            c.put("finish", code)
        deadline = time.monotonic() + FLUSH_S
        for c in self.channels:
            c.join(deadline)
        if self.tb is not None:
            self.tb.close()


def attach_files(run_dir: Path, paths: list[Path]) -> None:
    """Add files (`alexnet report`'s report.md) to the tracker runs of a run, if it has any; a tracker that
    cannot take them is said in one line each."""
    ledger = Ledger(run_dir)
    for name in REMOTE:
        entry = ledger.get(name)
        if entry is None:
            continue
        try:
            check_installed([name])
            if name == "mlflow":
                from .mlflow_run import attach

                _remote(name, run_dir)  # its HTTP defaults
                attach(entry, paths)
            else:
                from .wandb_run import attach as attach_wandb

                attach_wandb(entry, paths, run_dir)
            log.info("%s: added %s to run %s", name, ", ".join(p.name for p in paths), entry.get("run_id"))
        except Exception as e:  # noqa: BLE001 - the report is written; the tracker is extra
            log.warning("%s: %s not added to run %s (%s)", name, ", ".join(p.name for p in paths),
                        entry.get("run_id"), one_line(e))  # fmt: skip
