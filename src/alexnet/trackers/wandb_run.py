"""Weights & Biases (the `wandb` extra): one W&B run per training run, where WANDB_PROJECT
(else "alexnet"), WANDB_ENTITY, WANDB_MODE and WANDB_DIR (else the run directory) say; its files in
RUN/wandb/. W&B's config is mutable: a resume updates it (and a --budget plan is its ``plan`` section).

Offline runs (WANDB_MODE=offline) cannot be resumed in W&B (0.31 ignores ``resume`` offline): each start of
an offline run writes one more offline directory with the same run id, holding only what the earlier ones
do not, and `wandb sync --id ID RUN/wandb/offline-run-*` uploads them, in order, as one run."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("alexnet")


def _nested(tags: dict[str, Any]) -> dict[str, Any]:
    """``plan.max_steps`` -> {"plan": {"max_steps": ...}}: W&B shows config sections."""
    out: dict[str, Any] = {}
    for k, v in tags.items():
        head, _, rest = k.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = v
        else:
            out[k] = v
    return out


class WandbRun:
    name = "wandb"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run: Any = None

    def _init(self, entry: dict[str, Any] | None, config: dict[str, Any] | None) -> Any:
        import wandb

        kwargs: dict[str, Any] = {"name": self.run_dir.name, "config": config, "reinit": "create_new"}
        if entry is not None:  # a new run's id is W&B's
            kwargs |= {"id": entry["run_id"], "resume": "allow"}  # (offline, W&B ignores resume)
        if not os.environ.get("WANDB_PROJECT"):
            kwargs["project"] = (entry or {}).get("project") or "alexnet"
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(self.run_dir)
        return wandb.init(**kwargs)

    def start(self, entry: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
        self.run = self._init(entry, None if entry else config)
        if entry is not None:
            self.run.config.update(config, allow_val_change=True)
        if entry is not None and self.run.offline:
            log.info("wandb: W&B cannot resume an offline run: this start writes another offline directory of run "
                     "%s (%s); upload them as one run with: wandb sync --id %s %s", self.run.id, Path(self.run.dir).parent,
                     self.run.id, Path(self.run.dir).parents[1] / "offline-run-*")  # fmt: skip
        else:
            log.info("wandb: %s run %s (%s)", "continuing" if entry else "logging to", self.run.id,
                     "offline, in " + str(Path(self.run.dir).parent) if self.run.offline else self.run.url)  # fmt: skip
        return {"run_id": self.run.id, "project": self.run.project, "offline": self.run.offline}

    def delivered(self) -> tuple[int, int] | None:
        if self.run.offline or not self.run.resumed:
            return None  # the ledger's count holds
        return 0, max(0, self.run.starting_step - 1)  # the steps W&B has; its epoch rows are the ledger's

    def metrics(self, items: list[tuple[dict[str, float], int]]) -> None:
        for values, step in items:
            self.run.log(values, step=step)

    def tags(self, tags: dict[str, Any]) -> None:
        self.run.config.update(_nested(tags), allow_val_change=True)

    def files(self, paths: list[Path]) -> None:
        for p in paths:  # under the run directory's name: W&B keeps config.yaml for its own config
            self.run.save(glob.escape(str(p.absolute())), base_path=str(p.absolute().parents[1]), policy="now")

    def finish(self, code: int) -> None:
        self.run.finish(exit_code=code)


def attach(entry: dict[str, Any], paths: list[Path], run_dir: Path) -> None:
    """Add files (report.md) to the run ``entry`` names, outside training (offline: in one more directory)."""
    remote = WandbRun(run_dir)
    remote.run = remote._init(entry, None)
    remote.files(paths)
    remote.finish(0)
