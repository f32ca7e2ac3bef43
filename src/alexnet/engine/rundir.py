"""A run directory's safety: refuse to overwrite, prove it is writable, clean up after a killed save."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ..errors import UserError
from ..io.atomic import TEMP_GLOB
from ..io.locks import LOCK_NAME, lock_dir
from ..parallel.distributed import launch_rank

# what a run writes at its top, its .lock first: a start that stopped before its first save leaves some of them and
# may start again there; in a folder without a .lock every file is the user's, which a run must not overwrite
RUN_ENTRIES = {"checkpoints", "config.yaml", "stats.npz", "plan.json", "metrics.jsonl", "tensorboard", "wandb",
               "trackers.json", "crash.log", "report.md", "report.html", ".lock", ".write-test"}  # fmt: skip


def check_run_dir(run_dir: Path, resuming: bool) -> None:
    """Refuse to overwrite a run or train into a folder of other files; make sure the directory is writable before
    any work starts."""
    # a checkpoint or an epoch's metrics: what a run stopped before its first save (a NaN or out-of-memory at the
    # first steps; a failed first save removes its rows) never wrote; its config.yaml, stats.npz and plan are
    # written again by the new start
    holds = [run_dir / "metrics.jsonl", *(run_dir / "checkpoints").glob("*.pt")]
    if not resuming and any(p.exists() for p in holds):
        raise UserError(
            f"run directory {run_dir} already holds a run: resume it with --resume {run_dir}, "
            "or choose a new one with --out DIR"
        )
    if not resuming and run_dir.is_dir():
        names = {p.name for p in run_dir.iterdir()}
        ours = RUN_ENTRIES if LOCK_NAME in names else set()
        theirs = sorted(n for n in names if n not in ours and not Path(n).match(TEMP_GLOB))
        if theirs:
            shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            raise UserError(f"run directory {run_dir} holds files that are not a run's ({shown}): choose a new or "
                            "empty folder with --out DIR")  # fmt: skip
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UserError(f"cannot write to run directory {run_dir}: {ancestor} is not a writable directory")


def make_run_dir(run_dir: Path, resuming: bool) -> None:
    """Create the run directory, take its lock, and prove it takes a write (disk full, read-only mounts)."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock_dir(run_dir, "training into")
        check_run_dir(run_dir, resuming)  # again, under the lock: a run may have finished there meanwhile
        # half-written files of a process that was killed mid-save (the lock: no other process writes here)
        for stale in (run_dir / "checkpoints").glob(TEMP_GLOB):
            stale.unlink(missing_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run directory {run_dir}: {e.strerror or e}") from None


def claim_run_dir(parent: Path, name: str) -> tuple[Path, bool]:
    """A new directory for a run given no --out: ``parent/name``, else ``name-2``, ``name-3``..., each tried with
    one atomic mkdir, so runs started in the same second (a job array, a script) never share a directory.
    Returns it and whether this process made it: under torchrun only rank 0 does; the others' run_dir is
    only named in their logs."""
    if launch_rank() != 0:
        return parent / name, False
    for i in itertools.count(1):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir(parents=True)
            return path, True
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot create run directory {path}: {e.strerror or e}") from None
    raise AssertionError("unreachable")


def remove_if_empty(path: Path) -> None:
    """After a start that failed before writing anything: no empty directory is left behind."""
    try:
        path.rmdir()
    except OSError:
        pass
