from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# test.sh runs the suite in 2 pytest-xdist workers (docs/development.md): they share the cores, so each takes
# its share of them, at most 2 threads as the suite always had
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(min(2, max(1, (os.cpu_count() or 1) // _WORKERS)))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAM_DIR, RAM_DIR_MIN_FREE = Path("/dev/shm"), 8 << 30  # the suite's peak there, measured: see docs/development.md
_IN_RAM = pytest.StashKey[Path]()
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
    _LIBC.malloc_trim  # noqa: B018 - glibc's; musl has none
except (OSError, AttributeError):
    _LIBC = None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Test directories in RAM (tmpfs), unless --basetemp is given or it has less than 8 GiB free per
    pytest-xdist worker. Most tests train a real AlexNet, and its checkpoints (~0.45 GB each, model +
    momentum) dominate their time on a disk:
    a 15-checkpoint run took 34 s on disk (write 12 s, fsync 11 s, unlink 4 s) and 14 s in /dev/shm on the
    2-core machine. What the tests check (atomic replace, kills, resume, the order of fsyncs, renames and
    removals a power cut depends on) is the same on either; the power cut itself no test can make. One directory
    per checkout: pytest empties it when a
    session starts, and it is removed when every test passed."""
    workers = getattr(config.option, "numprocesses", None)  # pytest-xdist's -n; each worker needs its own room
    need = RAM_DIR_MIN_FREE * (workers if isinstance(workers, int) and workers > 1 else 1)
    if config.option.basetemp is None and RAM_DIR.is_dir() and shutil.disk_usage(RAM_DIR).free >= need:
        tag = hashlib.sha256(str(config.rootpath).encode()).hexdigest()[:12]
        config.option.basetemp = str(RAM_DIR / f"alexnet-pytest-{os.getuid()}-{tag}")
        config.stash[_IN_RAM] = Path(config.option.basetemp)


@pytest.fixture(autouse=True)
def _give_back_freed_memory() -> Iterator[None]:
    """After each test, return the freed heap to the system (glibc's malloc_trim). A test that trains in-process
    applies `alexnet train`'s allocator setting (tuning.keep_freed_memory: nothing is ever trimmed) to the whole
    pytest worker, which then held its largest test's peak for the rest of the run (4 GB per worker, measured
    with `free` beside /dev/shm's test directories on the 24 GiB machine: within 2 GB of its RAM)."""
    yield
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# The files that take longest, longest first, so that the two pytest-xdist workers end together (longest
# processing time first; the other files follow in their own order). On the 2-core AMD EPYC with AVX2, nothing else
# running (--durations=0), these seven took 371, 198, 181, 136, 127, 127 and 97 s, every other file under 70 s.
# With the six longest of an earlier suite first, pytest took 794 s against 895 s in pytest-xdist's default order
# (files with more tests first), the tests' times summing to 1548 and 1607 s. test.sh passes
# --no-loadscope-reorder, which keeps the order made here.
LONGEST_FIRST = ("test_distributed.py", "test_gpu_check.py", "test_use.py", "test_platforms.py", "test_reliability.py",
                 "test_hybrid.py", "test_budget.py")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ram = session.config.stash.get(_IN_RAM, None)
    if ram is not None and exitstatus == 0:
        shutil.rmtree(ram, ignore_errors=True)


def make_imagefolder(
    root: Path,
    classes: int = 3,
    per_class: int = 6,
    size: tuple[int, int] = (90, 80),
    val_per_class: int = 3,
    seed: int = 0,
) -> Path:
    """Tiny ImageFolder: class c is a noisy image tinted towards a class colour (learnable)."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40), (40, 200, 200)]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(colours[c % len(colours)], dtype=np.float32)
                img = base + rng.normal(0, 40, size=(size[1], size[0], 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"img_{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "data")


# Small, fast settings for real training runs in tests: the paper network at 67x67 crops.
FAST = (
    "--model alexnet --epochs 1 --batch-size 6 --set data.resize=72 --set data.crop=67 --set data.workers=0"
    " --set train.amp=none --set train.log_every=1"
).split()


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, after: int, under: str = "") -> None:
    """Files that io.atomic writes (checkpoints, exports, figures) whose path contains ``under`` take ``after``
    bytes and then fail as a full disk does, with ENOSPC from the write itself, under whatever writer runs on
    them (torch.save, safetensors, matplotlib)."""
    import builtins
    import errno
    import io

    from alexnet.io import atomic

    class Full(io.FileIO):
        def write(self, b: object) -> int:
            room = after - self.tell()
            data = memoryview(b).cast("B")  # type: ignore[arg-type]
            if room < len(data):
                if room > 0:  # what fits, as a disk does, and the next write is refused
                    return super().write(data[:room])
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    def fake_open(path: object, mode: str = "r", *args: object, **kw: object) -> object:
        if "w" in mode and under in str(path):
            return Full(str(path), "w")
        return builtins.open(path, mode, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
