"""The accelerator's host path, counted on the CPU: what Python does around each training step. A GPU step is
milliseconds, so a read of a device value (the host waits for the GPU's queue to drain) or host work that grows
with the dataset shows up there; neither depends on the device, so both are counted here."""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import alexnet.commands.train
import alexnet.data.batches
import alexnet.engine.epoch
import alexnet.engine.setup
from alexnet.cli import main
from alexnet.config import apply_overrides, load_recipe
from alexnet.data import keyed_random
from alexnet.data.batches import Batches, TensorSource, epoch_indices
from alexnet.data.transforms import epoch_draws
from alexnet.engine.signals import StopFlag
from alexnet.parallel import distributed

from .conftest import FAST

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}
MASKED_INDEX = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default}


class DeviceReads(TorchDispatchMode):
    """Records every read of a device value in a CPU run. On a CPU every tensor is on the host, so the device's
    tensors are tagged instead: the model's parameters and buffers (``tag``) and everything computed from a tagged
    tensor (the tag propagates through every op, in place ones included). A read is an op whose result the host
    must wait for (``.item()``, ``bool()``, ``int()``, ``float()`` and f-strings dispatch ``_local_scalar_dense``;
    ``nonzero``, ``masked_select`` and indexing with a boolean mask size their output from the values) or a
    Python-level ``tolist()``, ``numpy()`` or ``cpu()`` (they dispatch nothing: patched while the mode is on). Each
    read is recorded with ``where()``: the phase and the training step it came at. ``randperm`` calls are recorded
    the same way."""

    def __init__(self, where: Callable[[], tuple[str, int]]) -> None:
        super().__init__()
        self.where, self.reads, self.randperms = where, [], []
        self._ids: dict[int, weakref.ref] = {}
        self._patched: dict[str, Any] = {}

    def tag(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            self._ids[id(t)] = weakref.ref(t)

    def tagged(self, t: Any) -> bool:
        ref = self._ids.get(id(t)) if isinstance(t, torch.Tensor) else None
        return ref is not None and ref() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        inputs = tree_leaves((args, kwargs))
        if func.overloadpacket is aten.randperm:
            self.randperms.append(self.where())
        device_in = any(self.tagged(t) for t in inputs)
        masked = func in MASKED_INDEX and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1])
        )
        if device_in and (func in SCALAR_READS or masked):
            self.reads.append((*self.where(), func.overloadpacket.__name__))
        out = func(*args, **kwargs)
        if device_in:
            self.tag(*(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)))
        return out

    def __enter__(self) -> DeviceReads:
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = torch.Tensor.__dict__.get(name)

            def read(t: torch.Tensor, *a: Any, _name: str = name, _f: Any = original, **k: Any) -> Any:
                if self.tagged(t):
                    self.reads.append((*self.where(), _name))
                return _f(t, *a, **k)

            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, original in self._patched.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def test_the_read_counter_sees_reads_and_only_of_device_values() -> None:
    """The counter itself: a read of a tagged tensor or of one computed from it counts, a host tensor's does not."""
    mode = DeviceReads(lambda: ("t", 0))
    w, host = torch.ones(3), torch.arange(3.0)
    with mode:
        mode.tag(w)
        y = (w * 2).sum()
        float(host.sum()), host.tolist()
        y.item(), (w + 1).tolist(), bool(y > 0), w[w > 0]
    assert [r[2] for r in mode.reads] == ["_local_scalar_dense", "tolist", "_local_scalar_dense", "index"]


def _run_counted(run: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[DeviceReads, Any]:
    """``alexnet train`` with every device read and randperm recorded against (phase, global step)."""
    state: dict[str, Any] = {}
    phase = ["setup"]
    mode = DeviceReads(lambda: (phase[0], state["st"].global_step if "st" in state else -1))
    real_setup, real_evaluate, real_end = alexnet.engine.setup.setup, alexnet.engine.epoch.evaluate, None

    def setup(*a: Any, **k: Any) -> Any:
        s, st = real_setup(*a, **k)
        state["s"], state["st"] = s, st
        mode.tag(*st.model.parameters(), *st.model.buffers())
        phase[0] = "train"
        return s, st

    def evaluate(*a: Any, **k: Any) -> Any:
        phase[0] = "eval"
        try:
            return real_evaluate(*a, **k)
        finally:
            phase[0] = "epoch end"

    real_end = alexnet.engine.epoch.end_of_epoch

    def end_of_epoch(*a: Any, **k: Any) -> Any:
        phase[0] = "epoch end"
        try:
            return real_end(*a, **k)
        finally:
            phase[0] = "train"

    monkeypatch.setattr(alexnet.commands.train, "setup", setup)
    monkeypatch.setattr(alexnet.engine.epoch, "evaluate", evaluate)
    monkeypatch.setattr(alexnet.commands.train, "end_of_epoch", end_of_epoch)
    with mode:
        assert main(["train", "--out", str(run), *args]) == 0
    return mode, state["s"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    from .conftest import make_imagefolder

    return make_imagefolder(tmp_path / "data", classes=3, per_class=40, val_per_class=4)  # 120 train, 12 val


def test_the_host_reads_the_device_only_at_sync_steps(folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """train.sync_every=50: one sync point (a step at which the host reads device values, several at once) per 50
    steps, plus checkpoint steps and each epoch's end; a constant number of reads per validation, not one per
    batch; one epoch order drawn per epoch. (A CPU run reads at every step by default: sync_every auto is 1.)"""
    args = ["--data", str(folder), *FAST, "--epochs", "2", "--batch-size", "2", "--set", "train.sync_every=50",
            "--set", "train.checkpoint_every=45", "--set", "train.log_every=20"]  # fmt: skip
    orders, real_indices = [], alexnet.data.batches.epoch_indices

    def counted(n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool) -> torch.Tensor:
        if shuffle:  # (epoch, drawn in the training thread)
            orders.append((epoch, threading.current_thread() is threading.main_thread()))
        return real_indices(n, epoch, seed, rank, world, shuffle)

    monkeypatch.setattr(alexnet.data.batches, "epoch_indices", counted)
    mode, s = _run_counted(tmp_path / "run", args, monkeypatch)
    spe, total = len(s.data.train), 2 * len(s.data.train)
    assert spe == 60 and s.cfg.train.sync_every == 50  # 120 images in batches of 2
    train_steps = sorted({step for phase, step, _ in mode.reads if phase == "train"})
    allowed = set(range(50, total + 1, 50)) | set(range(45, total + 1, 45)) | {spe, total}
    assert train_steps and set(train_steps) <= allowed, train_steps
    evals = [r for r in mode.reads if r[0] == "eval"]
    assert len(s.data.val) == 6 and 0 < len(evals) <= 2 * 3, evals  # two validations, three reads each at most
    assert not [r for r in mode.randperms if r[0] == "train" and r[1] >= 1]  # no permutation in the steps' thread
    assert orders == [(0, True), (1, False)]  # each epoch's order once: the first's at its start, the second's ahead
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the run itself is whole


def test_a_cpu_run_reads_every_step_by_default(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter sees what sync_every changes: without it a CPU run reads at every step (free there)."""
    args = ["--data", str(folder), *FAST, "--batch-size", "2", "--set", "train.max_steps=12"]
    mode, s = _run_counted(tmp_path / "run", args, monkeypatch)
    assert s.cfg.train.sync_every == 1
    assert {step for phase, step, _ in mode.reads if phase == "train"} == set(range(1, 13))


N_IMAGENET = 1_281_167
FAST_SET = [a for a in FAST if "=" in a] + ["model.name=alexnet", "train.batch_size=6"]


def test_no_step_does_work_that_grows_with_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet's 1.28 M training samples (labels only; every image the same tiny one), rank 0 of 8: the number
    of batches is arithmetic, and the epoch's order is drawn once, however many steps run (before, every
    ``len()`` drew a whole permutation: 8-52 ms, several times a step), the augmentation's keyed draws with it
    (before, every step hashed its batch's keys and draws: 33 ops, 32 of them launches on a GPU)."""
    calls: list[int] = []
    real_indices = alexnet.data.batches.epoch_indices

    def counted(n: int, *a: Any, **k: Any) -> torch.Tensor:
        if n == N_IMAGENET:
            calls.append(n)
        return real_indices(n, *a, **k)

    monkeypatch.setattr(alexnet.data.batches, "epoch_indices", counted)
    hashed: list[int] = []  # the lengths of the indices keyed: the augmentation's draws
    real_keys = keyed_random.keys

    def keyed(seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
        hashed.append(len(index))
        return real_keys(seed, epoch, index)

    monkeypatch.setattr(keyed_random, "keys", keyed)
    real_build = alexnet.engine.setup.build_data
    image = torch.zeros(1, 3, 72, 72, dtype=torch.uint8)

    def imagenet_sized(cfg: Any, rank: int = 0, world: int = 1, **k: Any) -> Any:
        data = real_build(cfg, rank, world, **k)
        labels = torch.arange(N_IMAGENET) % len(data.class_names)
        data.train = Batches(TensorSource(image.expand(N_IMAGENET, -1, -1, -1), labels), 6, True, 0, 0, 8,
                             draws=epoch_draws)  # fmt: skip
        return data

    monkeypatch.setattr(alexnet.engine.setup, "build_data", imagenet_sized)
    cfg = apply_overrides(load_recipe("digits"), [*FAST_SET, "data.val_fraction=0.9", "train.ema=0.1",
                                                  "train.sync_every=4"])  # fmt: skip
    s, st = alexnet.engine.setup.setup(cfg, tmp_path / "run", None, distributed.setup("cpu"), verbose=False)
    try:
        assert len(s.data.train) == math.ceil(math.ceil(N_IMAGENET / 8) / 6)
        with StopFlag() as stop:
            for until in (3, 12):
                assert alexnet.engine.epoch.train_one_epoch(s, st, stop, until) is None and st.global_step == until
        list(s.data.train.epoch(1, len(s.data.train)))  # the next epoch's order, drawn ahead on a thread: waits for it
        assert len(calls) == 2, len(calls)  # epoch 1's when it started and epoch 2's ahead; none per step or restart
        assert hashed == [math.ceil(N_IMAGENET / 8)] * 2, hashed[:5]  # their draws with them, no step keys a batch
    finally:
        s.logger.close()
    batches = Batches(TensorSource(image.expand(N_IMAGENET, -1, -1, -1), torch.zeros(N_IMAGENET)), 256, True, 0, 3, 8)
    assert len(batches) == len(list(range(0, len(epoch_indices(N_IMAGENET, 0, 0, 3, 8, True)), 256)))
    for world, rank in ((1, 0), (8, 7), (64, 5), (3, 2)):
        evaluation = Batches(TensorSource(image.expand(1000, -1, -1, -1), torch.zeros(1000)), 7, False, 0, rank, world)
        assert len(evaluation) == len(list(evaluation.epoch(0)))


def test_timing_waits_for_the_device_on_mps_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The --budget probe and checks time the device's work, not its dispatch: they wait for it on any
    accelerator (torch.accelerator where torch has it, else the backend's own call). A CPU cannot take the MPS
    branch, so the calls are recorded instead of made."""
    made: list[str] = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: made.append(f"accelerator {device}"))
    distributed.synchronize(torch.device("mps"))
    distributed.synchronize(torch.device("cpu"))
    assert made == ["accelerator mps"]
    monkeypatch.delattr(torch.accelerator, "synchronize")
    monkeypatch.setattr(torch.mps, "synchronize", lambda: made.append("mps"))
    distributed.synchronize(torch.device("mps"))
    assert made[-1] == "mps"
