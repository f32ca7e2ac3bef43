"""The one exception type for user mistakes, and how any failure reaches the user: one line, no traceback."""

from __future__ import annotations

import os
import re
import select
import sys


class UserError(Exception):
    """Bad input from the user (paths, options, files). ``str(e)`` is the whole message."""


def describe(e: BaseException) -> tuple[str, int] | None:
    """The line printed after "alexnet COMMAND: " for a failure, and the exit code; None for an unexpected one
    under ``ALEXNET_DEBUG=1`` (the caller re-raises it, traceback and all)."""
    first = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, BrokenPipeError) and _stdout_gone():  # `alexnet predict ... | head`: the reader has left
        return "", 141  # nothing to say, as a shell's own tools (128 + SIGPIPE)
    if isinstance(e, UserError):
        return f"error: {e}", 2
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(e, ValueError):  # the first line: one raised in a data-loader worker carries its traceback
        return f"error: {first or type(e).__name__}", 2
    if isinstance(e, FileNotFoundError):
        return f"error: no such file: {e.filename or e}", 2
    if isinstance(e, OSError):  # a path the command cannot use (a file where a folder goes, no permission, disk full)
        return f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", 2
    if isinstance(e, _torch_oom()) or "can't allocate memory" in first:  # CUDA/MPS; the CPU allocator's RuntimeError
        asked = re.search(r"allocate (\d+) bytes", first)  # the CPU allocator says how much it was asked for
        what = f"{int(asked[1]) / 2**30:.1f} GiB asked for" if asked else first[:120]
        return (f"error: out of memory on the device ({what}); lower --batch-size (or the image size), or use "
                "train.amp=bf16/fp16 where the device has it", 2)  # fmt: skip
    if os.environ.get("ALEXNET_DEBUG"):
        return None
    return (f"error: {type(e).__name__}: {first[:300]} (an unexpected failure: rerun with ALEXNET_DEBUG=1 for "
            "the traceback)", 1)  # fmt: skip


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
