"""A run directory's safety: refuse to overwrite, prove it is writable, clean up after a killed save."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

from .errors import UserError


def check_run_dir(run_dir: Path, resuming: bool) -> None:
    """Refuse to overwrite a run; make sure the directory is writable before any work starts."""
    # a checkpoint or an epoch's metrics: what a run stopped before its first save (a NaN or out-of-memory at the
    # first steps) never wrote; its config.yaml, stats.npz and plan are written again by the new start
    holds = [run_dir / "metrics.jsonl", *(run_dir / "checkpoints").glob("*.pt")]
    if not resuming and any(p.exists() for p in holds):
        raise UserError(
            f"run directory {run_dir} already holds a run: resume it with --resume {run_dir}, "
            "or choose a new one with --out DIR"
        )
    ancestor = run_dir
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UserError(f"cannot write to run directory {run_dir}: {ancestor} is not a writable directory")


def make_run_dir(run_dir: Path, resuming: bool) -> None:
    """Create the run directory, take its lock, and prove it takes a write (disk full, read-only mounts)."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        _lock(run_dir)
        check_run_dir(run_dir, resuming)  # again, under the lock: a run may have finished there meanwhile
        # half-written files of a process that was killed mid-save (the lock: no other process writes here)
        for stale in (run_dir / "checkpoints").glob(".*.pt.*-*"):
            stale.unlink(missing_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run directory {run_dir}: {e.strerror or e}") from None


_LOCKS: dict[Path, IO[bytes]] = {}  # run directory -> its open lock file, held until release_run_dir


def _lock(run_dir: Path) -> None:
    """One process writes a run at a time: an exclusive lock on RUN/.lock (flock; on Windows msvcrt.locking).
    The OS drops it however the process ends, so a killed run never leaves a stale lock. Where the file system
    has no locks (some network mounts) the run goes on unlocked."""
    key = run_dir.absolute()
    if key in _LOCKS:
        return
    f = open(run_dir / ".lock", "a+b")  # noqa: SIM115 - held open while the run trains
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError as e:
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            raise UserError(f"another process is training into {run_dir} (it holds {run_dir / '.lock'}); wait for "
                            "it to end, or choose another --out") from None  # fmt: skip
        return
    _LOCKS[key] = f


def release_run_dir(run_dir: Path) -> None:
    """The end of a run in this process (a later run in the same process, a test, may take the lock again)."""
    f = _LOCKS.pop(run_dir.absolute(), None)
    if f is not None:
        f.close()  # closing the file drops the lock


def claim_run_dir(parent: Path, name: str) -> Path:
    """A new directory for a run given no --out: ``parent/name``, else ``name-2``, ``name-3``..., each tried with
    one atomic mkdir, so runs started in the same second (a job array, a script) never share a directory.
    Under torchrun only rank 0 makes it; the others' run_dir is only named in their logs."""
    if os.environ.get("RANK", "0") != "0":
        return parent / name
    for i in itertools.count(1):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir(parents=True)
            return path
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
