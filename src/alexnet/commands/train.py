"""`alexnet train`: from a Config to a finished (or cleanly stopped) run directory.

The loop in plain sight; its parts live in ``engine/``. Single process and torchrun/DDP take the same path.
The run directory holds config.yaml, metrics.jsonl, stats.npz, tensorboard/ and checkpoints/; rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..config import Config, apply_overrides, from_dict, load_recipe, parse_duration, resume_overrides
from ..engine.budget import command_age, plan_run
from ..engine.epoch import end_of_epoch, finished, train_one_epoch
from ..engine.rundir import claim_run_dir, remove_if_empty
from ..engine.runlog import setup_logging
from ..engine.setup import Session, setup, write_run_files
from ..engine.signals import StopFlag
from ..engine.state import TrainState
from ..errors import UserError, crash_log_at
from ..io import checkpoint as ckpt_io
from ..io import hub
from ..io.locks import lock_dir, unlock_dir
from ..parallel import distributed
from ..trackers import check_installed

log = logging.getLogger("alexnet")


@dataclass
class TrainResult:
    run_dir: Path
    stopped: int | None  # the signal that stopped the run, or None when it finished
    global_step: int
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics rows of the epochs run by this call


def train(cfg: Config, run_dir: Path, resume: dict[str, Any] | None = None, verbose: bool = True,
          started: float | None = None) -> TrainResult:  # fmt: skip
    """``started``: time.monotonic() when the process started, what a --budget counts from (default: now)."""
    started = time.monotonic() if started is None else started
    check_installed(cfg.train.report_to)
    dist = distributed.setup(cfg.train.device)
    session: Session | None = None
    code = 1  # how the run ended, for its trackers: 1 until it finishes (0) or a signal stops it
    try:
        s, st = setup(cfg, run_dir, resume, dist, verbose)
        session = s
        nothing_left = resume is not None and finished(s, st)
        if s.main and not nothing_left:
            write_run_files(s)
        # a resumed run keeps its plan (config.yaml)
        budget = plan_run(s, st, started) if s.cfg.train.budget and resume is None else None
        if s.main and not nothing_left:  # the config as this start trains on (the plan's included)
            s.logger.open(s.cfg.to_dict(), s.cfg.train.report_to, resuming=resume is not None)
        if nothing_left and s.main:
            log.info("nothing left to train: the run finished at epoch %d, step %d; to train on, resume with a larger "
                     "--epochs%s", st.epoch, st.global_step, " and train.max_steps" * bool(s.cfg.train.max_steps))  # fmt: skip
        history: list[dict[str, Any]] = []
        with StopFlag() as stop:
            while not finished(s, st):  # a --budget run's checks come at sync steps (BudgetRun.hook)
                signal = train_one_epoch(s, st, stop, after_sync=budget.hook(s, st) if budget else None)
                if signal is None:
                    t_end = time.monotonic()
                    history.append(end_of_epoch(s, st))
                    # one all-reduce: a stop any rank saw, and the slowest rank's epoch end (rank 0 alone writes
                    # the checkpoint), so that every rank's budget plans from the same numbers
                    got = torch.tensor([stop.signal or 0, time.monotonic() - t_end], device=s.device)
                    sig, end_s = distributed.all_reduce_max(got).tolist()
                    if budget is not None:
                        budget.after_end(end_s, "val_top1" in history[-1])
                    signal = int(sig) or None
                if signal is not None:
                    code = 128 + signal
                    return _stopped(s, st, signal, history)
        if s.main:
            b = st.best
            log.info("best val top-1 %.2f%% top-5 %.2f%% (epoch %d); run directory: %s", 100 * b["val_top1"],
                     100 * b["val_top5"], b["epoch"], run_dir)  # fmt: skip
            if s.cfg.train.budget and resume is None:
                spent = time.monotonic() - started
                log.info("finished in %.0fs: %.1f%% of the %s budget", spent, 100 * spent / parse_duration(
                    s.cfg.train.budget), s.cfg.train.budget)  # fmt: skip
        code = 0
        return TrainResult(run_dir, None, st.global_step, st.best, history)
    finally:
        if session is not None:  # the one close, however the run ends: no writer thread or events file is left
            session.logger.close(code)
        unlock_dir(run_dir)
        distributed.teardown()


def _stopped(s: Session, st: TrainState, signal: int, history: list[dict[str, Any]]) -> TrainResult:
    """The one stop path: the checkpoint of this step is written; say how to go on."""
    if s.main:
        where = f"at epoch {st.epoch + 1} step {st.step_in_epoch}" if st.step_in_epoch else f"after epoch {st.epoch}"
        log.info("stopped by signal %d %s; checkpoint %s; resume with: alexnet train --resume %s", signal, where,
                 s.run_dir / "checkpoints" / "last.pt", s.run_dir)  # fmt: skip
    return TrainResult(s.run_dir, signal, st.global_step, st.best, history)


def run_train(data: str | None = None, recipe: str | None = None, out: str | None = None,
              resume: str | None = None, overrides: list[str] | None = None) -> int:  # fmt: skip
    """`alexnet train`: a new run from a recipe plus overrides, or ``resume`` an existing one. Returns the
    exit code: 0, or 128 + the signal that stopped it (143 after SIGTERM, 130 after SIGINT)."""
    started = time.monotonic() - command_age()  # a --budget counts from the command's start
    setup_logging()
    overrides = list(overrides or [])
    made, run_dir = False, None
    try:
        if resume:
            is_file = Path(resume).is_file()
            run_dir = ckpt_io.run_dir_of(Path(resume)) if is_file else Path(resume)
            crash_log_at(run_dir / "crash.log")
            # before its checkpoint is read: no other process can replace it while this one starts (make_run_dir);
            # only a run's folder (a folder that is not gets no .lock from a refused resume)
            if distributed.launch_rank() == 0 and (run_dir / "checkpoints").is_dir():
                lock_dir(run_dir, "training into")
            ck, path = ckpt_io.load_for_resume(Path(resume) if is_file else run_dir)
            cfg = resume_overrides(from_dict(ck["config"], f"checkpoint {path}"), overrides, recipe)
            if out and Path(out) != run_dir:
                raise UserError("--out cannot be combined with --resume (a resumed run continues in its own directory)")
        else:
            ck = None
            cfg = apply_overrides(load_recipe(recipe or ("paper" if data else "digits")), overrides)
            if cfg.train.budget and cfg.train.max_steps:
                raise UserError("--budget plans train.max_steps itself; give one or the other")
            if cfg.train.budget and any(o.partition("=")[0].strip() == "train.epochs" for o in overrides):
                log.warning("--epochs %d is not used: --budget plans the epochs itself", cfg.train.epochs)
            if hub.is_hub(cfg.model.weights):  # the cached snapshot: its folder names the repository and commit
                snapshot = hub.download(str(cfg.model.weights)).parent
                log.info("weights %s: %s", cfg.model.weights, snapshot)
                cfg.model.weights = str(snapshot)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{cfg.recipe}-{cfg.model.name}-{stamp}"
            run_dir, made = (Path(out), False) if out else claim_run_dir(Path("runs"), name)
            crash_log_at(run_dir / "crash.log")  # an internal error's traceback, once the directory exists
        result = train(cfg, run_dir, ck, started=started)
    except BaseException:
        if made and run_dir is not None:  # the directory claimed above, if nothing was written into it
            remove_if_empty(run_dir)
        raise
    finally:
        if run_dir is not None:  # (train() unlocks too; a resume may fail before it starts)
            unlock_dir(run_dir)
    return 128 + result.stopped if result.stopped else 0
