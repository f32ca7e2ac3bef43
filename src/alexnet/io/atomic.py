"""Writing a file so that a crash at any moment leaves the old file or the new one, never a torn one.

The one home of "write to a temporary file in the same directory, fsync, rename over the target, fsync
the directory". Windows cannot open a directory (``os.open(dir)`` raises PermissionError) and needs no
directory fsync for the rename to be durable, so that last step is skipped where the OS refuses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..errors import UserError


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX). Windows refuses to open directories: nothing to do."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # PermissionError on Windows; the rename is already durable there
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and platforms) cannot fsync a directory
        pass
    finally:
        os.close(fd)


def check_output(path: Path, force: bool = False) -> None:
    """The one precondition on a file a command writes (before any work): its directory exists, it is not a
    directory, and an existing file is replaced only with ``--force``."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the file to write")
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise UserError(f"output directory does not exist: {path.parent}")


TEMP_GLOB = ".*.tmp-*"  # every temp_name: what a killed writer may leave, for clean-up


def temp_name(path: Path) -> Path:
    """The temporary sibling used while ``path`` is written (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class _Writes:
    """A file as ``write`` sees it: every write whole, and the OSError of the first that failed kept. torch's
    serialisers (torch.save) turn a failed write into a RuntimeError ("unexpected pos 704 vs 598", measured on a
    full 1 MB tmpfs with torch 2.14.1) that names neither the file nor the disk; atomic_write raises the kept
    OSError instead."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):  # a short count from a raw file is a write to finish (or to fail: ENOSPC)
                n = self._f.write(view[done:])
                done += len(view) - done if n is None else n
        except OSError as e:
            self.error = e
            raise
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file, fsync it, and rename it over ``path``. On any error the
    temporary file is removed, ``path`` is untouched, and the error propagates (a failed write's OSError, such
    as a full disk, whatever the writer made of it)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            writes = _Writes(f)
            try:
                write(cast(BinaryIO, writes))
            except Exception as e:
                if writes.error is None or isinstance(e, OSError):
                    raise
                raise writes.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # named by the file asked for, not the hidden temporary one
        tmp.unlink(missing_ok=True)
        if e.errno is not None and e.filename in (str(tmp), tmp, None):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """A matplotlib figure saved as ``atomic_write`` saves: in the format its suffix names (PNG without one)."""
    fmt = Path(path).suffix[1:].lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
