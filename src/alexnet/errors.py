"""The one exception type for user mistakes, and how any failure reaches the user: one line, no traceback.

A failure is the user's (exit 2, "error: ...") when it was raised on purpose (``UserError``), or is an OS error
on a path the command line gave or one inside it (``--data DIR``'s images, ``--out RUN``'s checkpoints: no
permission, a file gone, a folder where a file goes), or a full disk anywhere. Paths are told apart here, by
comparing the error's file names with the arguments, rather than by converting at every place that opens a
user's path: those are dozens, inside PIL, numpy, torch, safetensors and the standard library, and a place
missed would be either a user's mistake reported as our bug or our bug reported as theirs. The price: a bug
of ours that opens a wrong file inside a folder the user named still reads as theirs (its message names the
file). A path the user gave only indirectly (the data folder a run's config.yaml records) reads as ours.

Anything else is an internal error (exit 1): one line saying so, and the traceback written to a file the line
names: the run directory's ``crash.log`` once ``train`` knows its run (``crash_log_at``), else a temporary
``alexnet-crash-*.log``. ``ALEXNET_DEBUG=1`` re-raises it instead, traceback and all.
"""

from __future__ import annotations

import errno
import os
import re
import select
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence


class UserError(Exception):
    """Bad input from the user (paths, options, files). ``str(e)`` is the whole message."""


class UserValueError(UserError, ValueError):
    """A value a library function refuses (a model's input size, an unknown model or layer name): a UserError to
    the command line, and to Python callers the ValueError that torch's and torchvision's own checks raise."""


def missing_extra(what: str, extra: str) -> UserError:
    """ "WHAT needs the EXTRA extra: pip install ...", naming the extra's packages as this installation's metadata
    lists them: the package is installed from its repository, so `pip install "alexnet[EXTRA]"` would look for a
    project of that name on PyPI, which is not this one."""
    from importlib import metadata

    try:
        reqs = metadata.requires("alexnet") or []
    except metadata.PackageNotFoundError:  # run from a source tree (hubconf.py in a clone)
        reqs = []
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    pkgs = [r.split(";")[0].strip() for r in reqs if marker.search(r)]
    how = " ".join(["pip install", *map(shlex.quote, pkgs)]) if pkgs else f'pip install -e ".[{extra}]" in a clone'
    return UserError(f"{what} needs the {extra} extra: {how}")


_crash_log: str | None = None  # where the next internal error's traceback goes; None: a temporary file
# a full disk (or quota): the machine's state wherever it is met, never the code's
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def crash_log_at(path: str | os.PathLike[str] | None) -> None:
    """Write the next internal error's traceback to ``path`` (appended; used while its folder exists), e.g. a
    run directory's crash.log; None: to a temporary file. The command line resets it before each command."""
    global _crash_log
    _crash_log = None if path is None else os.fspath(path)


def describe(e: BaseException, argv: Sequence[str] = ()) -> tuple[str, int] | None:
    """The line printed after "alexnet COMMAND: " for a failure of the command run with ``argv``, and the exit
    code; None for an internal error under ``ALEXNET_DEBUG=1`` (the caller re-raises it, traceback and all)."""
    first = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, BrokenPipeError):  # `alexnet predict ... | head`: the reader has left
        # nothing to say, as a shell's own tools (128 + SIGPIPE); where that cannot be told (no poll: Windows), a line
        return ("", 141) if _stdout_gone() else ("error: the output's reader left before the end (Broken pipe)", 2)
    if isinstance(e, UserError):
        return f"error: {_worker_message(str(e))}", 2
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(e, OSError) and (e.errno in DISK_FULL or _on_given_path(e, argv)):
        if isinstance(e, FileNotFoundError):
            return f"error: no such file: {e.filename}", 2
        return f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", 2
    if isinstance(e, (MemoryError, _torch_oom())) or "can't allocate memory" in first:  # the CPU allocator's too
        asked = re.search(r"allocate (\d+) bytes", first)  # the CPU allocator says how much it was asked for
        what = f"{int(asked[1]) / 2**30:.1f} GiB asked for" if asked else first[:120] or "no more could be had"
        command = argv[0] if argv else ""
        lower = "--batch-size (or the image size)" if command in _BATCHED else "the image size"
        amp = ", or use train.amp=bf16/fp16 where the device has it" if command == "train" else ""
        return f"error: out of memory ({what}); lower {lower}{amp}", 2
    if "out of shared memory" in first:  # torch's DataLoader: a worker's bus error (a container's small /dev/shm)
        return ("error: the data-loader workers ran out of shared memory (/dev/shm, small in containers): give it "
                "more (docker --shm-size) or use fewer workers (--set data.workers=0)", 2)  # fmt: skip
    if os.environ.get("ALEXNET_DEBUG"):
        return None
    where = _write_traceback(e, argv)
    said = (
        f"traceback written to {where}" if where else "the traceback could not be written: rerun with ALEXNET_DEBUG=1"
    )
    return f"internal error: {type(e).__name__}: {first[:300]}; {said} (please report it)", 1


_BATCHED = ("train", "evaluate", "predict", "features")  # the commands with --batch-size


def _worker_message(text: str) -> str:
    """A UserError's own message; one re-raised from a data-loader worker (torch's ExceptionWrapper: "Caught
    UserError in DataLoader worker process 0", then the worker's traceback) has it on the traceback's last line."""
    if text.startswith("Caught ") and "Original Traceback" in text:
        return text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def _on_given_path(e: OSError, argv: Sequence[str]) -> bool:
    """Whether the OS error's file is an argument (``--out X``, ``--out=X``, ``--set data.path=X``, a glob's
    folder) or lies inside one."""
    names = [os.path.abspath(os.fsdecode(n)) for n in (e.filename, e.filename2) if isinstance(n, (str, bytes)) and n]
    given = set()
    for arg in argv:
        for text in {arg, arg.split("=", 1)[-1]}:
            cut = min((text.index(c) for c in "*?[" if c in text), default=None)  # a glob: the folder it is in
            text = text if cut is None else os.path.dirname(text[:cut]) or "."
            if text:
                given |= {os.path.abspath(text), os.path.realpath(text)}
    return any(n == g or n.startswith(g.rstrip(os.sep) + os.sep) for n in names for g in given)


def _write_traceback(e: BaseException, argv: Sequence[str]) -> str | None:
    """Append the traceback, under a line saying when, which command and which versions, to the crash log (while
    its folder exists), else to a new temporary file; the file written, or None when neither could be."""
    versions = [f"{m} {getattr(sys.modules.get(m), '__version__', '')}".strip() for m in ("alexnet", "torch")
                if m in sys.modules] + [f"python {sys.version.split()[0]}", sys.platform]  # fmt: skip
    rank = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
    text = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}{rank} alexnet {shlex.join(argv)} [{', '.join(versions)}]\n"
            + "".join(traceback.format_exception(type(e), e, e.__traceback__)))  # fmt: skip
    if _crash_log is not None and os.path.isdir(os.path.dirname(_crash_log) or "."):
        try:
            with open(_crash_log, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(text)
            return _crash_log
        except OSError:
            pass
    try:
        fd, path = tempfile.mkstemp(prefix="alexnet-crash-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _stdout_gone() -> bool:
    """True when standard output is a pipe whose reader closed it (poll says POLLERR); it then points at
    /dev/null, so that the interpreter's last flush does not fail again (Python's "Note on SIGPIPE")."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file (captured)
        return False


def _torch_oom() -> type[BaseException]:
    """torch.OutOfMemoryError (CUDA, MPS), looked up only once a command already loaded torch."""
    torch = sys.modules.get("torch")
    return getattr(torch, "OutOfMemoryError", MemoryError) if torch is not None else MemoryError
