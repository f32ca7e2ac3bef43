"""One writer per directory: an exclusive OS lock on DIR/.lock, held by the process training a run or
preparing a store, so that a second one (another terminal, a requeued job) is refused instead of writing
beside it."""

from __future__ import annotations

import errno
from pathlib import Path
from types import ModuleType
from typing import IO

from ..errors import UserError

# plain modules to the type checker: typeshed declares each on its own platform only, and a test runs the
# msvcrt branch on Linux (emulated)
fcntl: ModuleType | None
msvcrt: ModuleType
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_NAME = ".lock"
_HELD: dict[Path, IO[bytes]] = {}  # directory -> its open lock file, until unlock_dir


def lock_dir(path: Path, doing: str) -> None:
    """Take DIR/.lock (flock; on Windows msvcrt.locking) or raise UserError naming ``doing`` ("training into").
    The OS drops it however the process ends, so a killed process never leaves a stale lock. Where the file
    system has no locks (some network mounts) the work goes on unlocked."""
    key = path.absolute()
    if key in _HELD:
        return
    f = open(path / LOCK_NAME, "a+b")  # noqa: SIM115 - held open while the work goes on
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError as e:
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            raise UserError(f"another process is {doing} {path} (it holds {path / LOCK_NAME}); wait for it to end, "
                            "or choose another --out") from None  # fmt: skip
        return
    _HELD[key] = f


def unlock_dir(path: Path) -> None:
    """The end of the work in this process (a later one in the same process, a test, may lock it again)."""
    f = _HELD.pop(path.absolute(), None)
    if f is not None:
        f.close()  # closing the file drops the lock
