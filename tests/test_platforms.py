"""Where users run it: the real constraints of platforms this machine lacks (MPS: no float64; Windows: no
directory open, no fork; pre-Ampere GPUs: no native bf16), and faults a long run meets (signals to the
whole process group, kills between writes, batches that fail to decode, odd but valid JPEGs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alexnet.cli import main
from alexnet.io import checkpoint as ckpt_io

from .conftest import FAST


class NoFloat64(TorchDispatchMode):
    """MPS has no float64: fail on any op that takes or makes one."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"float64 tensor in {func}")
        return out


def _no_float64(fn):  # noqa: ANN001, ANN202
    def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
        with NoFloat64():
            return fn(*a, **k)

    return wrapped


def test_training_steps_and_evaluation_make_no_float64(tiny_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import alexnet.commands.evaluate
    import alexnet.commands.train

    monkeypatch.setattr(alexnet.commands.train, "train_one_epoch", _no_float64(alexnet.commands.train.train_one_epoch))
    monkeypatch.setattr(alexnet.commands.train, "end_of_epoch", _no_float64(alexnet.commands.train.end_of_epoch))
    monkeypatch.setattr(alexnet.commands.evaluate, "evaluate", _no_float64(alexnet.commands.evaluate.evaluate))
    run = tmp_path / "mps-like"
    args = [*FAST, *"--set data.pca_noise=0.1 --set optim.label_smoothing=0.1 --set train.checkpoint_every=2".split()]
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *args]) == 0
    assert main(["evaluate", str(run), "--tta", "10crop", "--json"]) == 0
    with pytest.raises(AssertionError, match="float64"), NoFloat64():  # the mode itself does catch one
        torch.ones(2, dtype=torch.float64)


def test_predict_features_and_explain_make_no_float64(tiny_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """What runs on the device for predict (TTA views), features and explain's occlusion map, from the batch's
    normalisation to the result back on the host, under the same mode."""
    import alexnet.commands.explain
    import alexnet.commands.predict

    def stepped(gen_fn):  # noqa: ANN001, ANN202  (a generator: each step under the mode)
        def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
            gen = gen_fn(*a, **k)
            while True:
                with NoFloat64():
                    item = next(gen, None)
                if item is None:
                    return
                yield item

        return wrapped

    monkeypatch.setattr(alexnet.commands.predict, "run", stepped(alexnet.commands.predict.run))
    monkeypatch.setattr(alexnet.commands.explain, "occlusion_map", _no_float64(alexnet.commands.explain.occlusion_map))
    run = tmp_path / "mps-like"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST]) == 0
    images = [str(p) for p in sorted((tiny_folder / "val").rglob("*.png"))[:3]]
    assert len(images) == 3
    assert main(["predict", str(run), *images, "--tta", "10crop", "--json"]) == 0
    for layer in ("conv5", "fc7"):
        assert main(["features", str(run), *images, "--layer", layer, "--out", str(tmp_path / f"{layer}.npz")]) == 0
    assert main(["explain", str(run), images[0], "--out", str(tmp_path / "occlusion.png"), "--stride", "40"]) == 0


# PyTorch's list of CUDA ops with no deterministic kernel (torch.use_deterministic_algorithms' docstring,
# torch 2.14: "will throw a RuntimeError"), as the aten ops a CPU run calls; NLLLoss's are the 2-d kernels
# (the 1-d CUDA kernels reduce in a fixed order, aten/src/ATen/native/cuda/Loss.cu).
CUDA_NONDETERMINISTIC = {
    "avg_pool3d_backward", "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
    "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward", "upsample_bilinear2d_backward",
    "_upsample_bilinear2d_aa_backward", "upsample_bicubic2d_backward", "_upsample_bicubic2d_aa_backward",
    "upsample_trilinear3d_backward", "reflection_pad1d_backward", "reflection_pad2d_backward",
    "reflection_pad3d_backward", "nll_loss2d_forward", "nll_loss2d_backward", "_ctc_loss_backward",
    "_embedding_bag_backward", "put_", "histc", "bincount", "median", "nanmedian", "grid_sampler_2d_backward",
    "grid_sampler_3d_backward", "scatter_reduce",
}  # fmt: skip


class OpRecorder(TorchDispatchMode):
    """Every aten op called (forward and backward), by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_deterministic_training_and_evaluation_call_no_op_cuda_lacks_a_deterministic_kernel(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.deterministic=true on CUDA: every op of a training step (at 67 px, where the pool before fc6 is
    not the identity) and of evaluation has a deterministic CUDA kernel; cuBLAS gets its fixed-order setting."""
    import alexnet.commands.evaluate
    import alexnet.commands.train

    recorder = OpRecorder()

    def recorded(fn):  # noqa: ANN001, ANN202
        def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
            with recorder:
                return fn(*a, **k)

        return wrapped

    for module, name in ((alexnet.commands.train, "train_one_epoch"), (alexnet.commands.evaluate, "evaluate")):
        monkeypatch.setattr(module, name, recorded(getattr(module, name)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run, deterministic = tmp_path / "cuda-like", ["--set", "train.deterministic=true"]
    try:
        assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST, *deterministic]) == 0
        assert main(["evaluate", str(run), "--tta", "10crop", "--json"]) == 0
    finally:
        torch.use_deterministic_algorithms(False)  # a process-wide switch: keep it from the other tests
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "convolution_backward" in recorder.ops and "mm" in recorder.ops  # it did record the step
    assert not recorder.ops & CUDA_NONDETERMINISTIC, sorted(recorder.ops & CUDA_NONDETERMINISTIC)
    recorder.ops.clear()  # without the setting the same run calls the adaptive pool's backward: the check bites
    assert main(["train", "--data", str(tiny_folder), "--out", str(tmp_path / "default"), *FAST]) == 0
    assert "_adaptive_avg_pool2d_backward" in recorder.ops


def test_windows_directory_open_refused_training_still_checkpoints(tiny_folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    real_open = os.open

    def windows_open(path, flags, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))  # what Windows says for a directory
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", windows_open)
    run = tmp_path / "win"
    assert (
        main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST, "--set", "train.checkpoint_every=1"]) == 0
    )
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert ckpt_io.load(run / "checkpoints" / "best.pt")["global_step"] == 3


def test_prepare_ends_its_workers_without_a_signal(tiny_folder: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """prepare's workers ignore SIGTERM (the main process handles a stop), so ending them must not rely on one:
    multiprocessing.Pool's exit sent SIGTERM and then waited for the workers, and a CI run hung there for good
    (reproduced: 1 hang in 260 two-worker prepares). Here each signal a worker would get is recorded, then
    sent as SIGKILL so that the old code fails instead of hanging."""
    from multiprocessing.process import BaseProcess

    from alexnet.data import store

    sent, real_kill = [], BaseProcess.kill
    monkeypatch.setattr(BaseProcess, "terminate", lambda self: sent.append(self.pid) or real_kill(self))
    for i in range(3):
        store.prepare(str(tiny_folder), str(tmp_path / f"s{i}"), size=40, workers=2, progress=False)
    assert sent == []


def test_prepare_with_the_spawn_start_method(tiny_folder: Path, tmp_path: Path) -> None:
    """Windows has no fork and macOS must not fork after importing torch: `prepare` with spawned workers, in a
    fresh process as a user's would be (and with a time limit: a pool that lost a worker would wait forever)."""
    from alexnet.data import store

    a, b = tmp_path / "spawned", tmp_path / "inline"
    code = ("import sys; from alexnet.data import store; store.START_METHOD = 'spawn'; "
            "store.prepare(sys.argv[1], sys.argv[2], size=40, workers=2, progress=False)")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, str(tiny_folder), str(a)], check=True, timeout=240, env=env)
    store.prepare(str(tiny_folder), str(b), size=40, workers=1, progress=False)
    assert store.START_METHOD == "fork"  # this is Linux: fork everywhere else in the suite
    assert (a / "train.u8").read_bytes() == (b / "train.u8").read_bytes()


def test_training_with_spawned_loader_workers_equals_training_without(tiny_folder: Path, tmp_path: Path) -> None:
    """macOS and Windows start data-loader workers with spawn (each unpickles the dataset in a fresh interpreter):
    `train` with 2 of them, in a fresh process as a user's would be, ends with the weights of a run with none."""
    code = ("import multiprocessing, sys; multiprocessing.set_start_method(sys.argv.pop(1), force=True); "
            "from alexnet.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    args = ["train", "--data", str(tiny_folder), *FAST, "--set", "data.pca_noise=0.1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # both runs one thread: the same summation order
    for method, out, workers in (("spawn", "spawned", 2), ("fork", "inline", 0)):
        res = subprocess.run([sys.executable, "-c", code, method, *args, "--out", str(tmp_path / out), "--set",
                              f"data.workers={workers}"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = (ckpt_io.load(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("spawned", "inline"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("capability, amp", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"),
                                             ((6, 1), "none")])  # fmt: skip
def test_auto_amp_follows_the_gpu_generation(monkeypatch: pytest.MonkeyPatch, capability: tuple, amp: str) -> None:
    from alexnet.config import TrainConfig
    from alexnet.engine import tuning

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # what T4s say
    resolved = tuning.resolve(TrainConfig(), torch.device("cuda", 0))
    assert resolved.amp == amp and resolved.sync_every == (TrainConfig().log_every or 50)  # host reads: every N steps


@pytest.mark.parametrize("major, fp16, bf16", [(9, True, True), (8, True, True), (7, True, False), (6, False, False)])
def test_triton_kernels_only_where_triton_runs(monkeypatch: pytest.MonkeyPatch, major: int, fp16: bool,
                                               bf16: bool) -> None:  # fmt: skip
    """The fused LRN and train.compile=auto need Triton: compute capability 7.0+ (a P100 is 6.0), bf16 from 8.0,
    and the triton package, which PyTorch's Windows wheels lack; elsewhere the LRN's plain path runs, uncompiled."""
    pytest.importorskip("triton")
    from types import SimpleNamespace

    from alexnet.engine import tuning
    from alexnet.models import lrn

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.version, "hip", None)
    cuda = torch.device("cuda", 0)
    assert (lrn.triton_runs(cuda, torch.float16), lrn.triton_runs(cuda, torch.bfloat16)) == (fp16, bf16)
    assert tuning.compile_pays(cuda, True, 10**9) == fp16
    assert not lrn.triton_runs(torch.device("cpu"))
    monkeypatch.setattr(lrn, "_TRITON", False)  # no triton package
    assert not lrn.triton_runs(cuda, torch.float16) and not tuning.compile_pays(cuda, True, 10**9)


def test_fp16_with_the_loss_scaler_trains_and_resumes_exactly(tiny_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """train.amp=fp16, auto on V100 and T4, run here on the CPU (which refuses it only for its speed): the loss
    scaler skips the first steps' overflows, the weights stay finite, the checkpoint holds the scaler's state,
    and a run resumed mid-epoch ends bit for bit where the uninterrupted one did."""
    from alexnet.engine import setup

    monkeypatch.setattr(setup, "check_amp", lambda amp, device: None)
    args = ["--data", str(tiny_folder), *FAST, "--epochs", "2", "--set", "train.amp=fp16", "--set", "optim.lr=0.001",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_last=3"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", "--out", str(full), *args]) == 0  # 3 steps an epoch
    last = ckpt_io.load(full / "checkpoints" / "last.pt")
    assert last["config"]["train"]["amp"] == "fp16" and last["scaler"]["scale"] < 2.0**16  # it backed off
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    (cut / "checkpoints").mkdir(parents=True)
    for f in ("config.yaml", "checkpoints/step-00000004.pt"):
        (cut / f).write_bytes((full / f).read_bytes())
    assert main(["train", "--resume", str(cut / "checkpoints" / "step-00000004.pt")]) == 0
    resumed = ckpt_io.load(cut / "checkpoints" / "last.pt")
    assert resumed["scaler"] == last["scaler"]
    for k, v in last["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_sigterm_to_the_whole_process_group_saves_and_exits(tiny_folder: Path, tmp_path: Path) -> None:
    """SLURM pre-emption: every process of the job, data-loader workers included, gets SIGTERM."""
    run = tmp_path / "group"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [*FAST, *"--epochs 50 --batch-size 2 --set data.workers=2 --set train.checkpoint_every=1".split()]
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--data", str(tiny_folder), "--out", str(run),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    t0 = time.time()
    while not list((run / "checkpoints").glob("step-*.pt")) if (run / "checkpoints").exists() else True:
        assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    time.sleep(1.0)  # workers are running
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert f"alexnet train --resume {run}" in err and "Traceback" not in err
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["global_step"] >= 1


def test_metrics_rows_are_never_duplicated_by_a_kill(tiny_folder: Path, tmp_path: Path) -> None:
    """metrics.jsonl, and TensorBoard, which reads every events file of the run: what a failed start and a
    killed run logged after their last checkpoint is hidden (purge_step), not plotted beside the steps trained
    again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    def next_second() -> None:  # events files sort by the second they were opened in, then by a per-process
        time.sleep(1.01 - time.time() % 1)  # counter compared as text ("10" < "9"): one file per second here

    def killed_run_logged(steps: range) -> None:
        next_second()
        with SummaryWriter(str(run / "tensorboard")) as w:
            for step in steps:
                w.add_scalar("step/train_loss", 99.0, step)
        next_second()

    run = tmp_path / "rows"
    (run / "checkpoints").mkdir(parents=True)  # a start that died before its first checkpoint: its lock taken
    (run / ".lock").touch()
    killed_run_logged(range(1, 4))
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST, "--epochs", "1"]) == 0  # 3 steps
    metrics = run / "metrics.jsonl"
    row = json.loads(metrics.read_text())
    # killed after writing epoch 2's row, before publishing its checkpoint, mid-way through a third line
    metrics.write_text(metrics.read_text() + json.dumps(row | {"epoch": 2}) + "\n" + '{"epoch": 3, "val')
    killed_run_logged(range(4, 8))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == row
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    losses = tb.Scalars("step/train_loss")
    assert [e.step for e in losses] == [1, 2, 3, 4, 5, 6] and 99.0 not in [e.value for e in losses]
    assert [e.step for e in tb.Scalars("val_top1")] == [3, 6]  # each epoch's row once, at the step that ended it
    assert [e.value for e in tb.Scalars("epoch")] == [1, 2]


def test_a_batch_in_which_every_image_fails_to_decode_is_skipped(tiny_folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from alexnet.data import folder
    from alexnet.data.images import ImageError

    assert main(["pca-stats", "--data", str(tiny_folder), "--size", "72", "--workers", "0"]) == 0  # before the damage
    real = folder.load_rgb

    def flaky(path):  # noqa: ANN001, ANN202 - every training image fails; validation images decode
        if "/train/" in str(path):
            raise ImageError(f"{path}: unreadable image (cut short)")
        return real(path)

    monkeypatch.setattr(folder, "load_rgb", flaky)
    run = tmp_path / "dirty"
    assert main(["train", "--data", str(tiny_folder), "--out", str(run), *FAST, "--set", "model.init=kaiming"]) == 0
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["global_step"] == 3 and all(
        torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point()
    )
    torch.manual_seed(0)
    from alexnet import create_model

    fresh = create_model("alexnet", 3, init="kaiming")
    assert torch.equal(ck["model"]["features.conv1.weight"], fresh.state_dict()["features.conv1.weight"])  # no update


def test_jpegs_with_trailing_data_are_accepted_and_cut_ones_refused(tmp_path: Path) -> None:
    from alexnet.data.folder import scan_folder

    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "phone.jpg", quality=90)
    (d / "phone.jpg").write_bytes((d / "phone.jpg").read_bytes() + os.urandom(4096))  # e.g. an appended preview
    Image.fromarray(rgb).save(d / "cut.jpg", quality=90)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:900])
    index = scan_folder(tmp_path / "train")
    assert [Path(p).name for p, _ in index.samples] == ["phone.jpg"]
    assert len(index.bad) == 1 and "cut.jpg" in index.bad[0]


def test_a_crop_below_the_minimum_fails_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), "--set", "data.resize=64", "--set", "data.crop=60"]) == 2
    err = capsys.readouterr().err
    assert "below alexnet's minimum input of 67x67" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_torchvision_weights_for_another_model_fail_before_anything_is_written(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`--weights torchvision` with the default model (the paper's): refused once the run directory existed,
    which it left behind (with a lock and an empty checkpoints/)."""
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), "--weights", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert "torchvision's weights are for alexnet_owt, not alexnet" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_tower_devices_this_machine_lacks_fail_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    assert main(["train", "--out", str(out), "--towers", "cuda:0,cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is available" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_gpu_the_machine_lacks_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """--device cuda:5 on a machine with two GPUs (torch's own error came at the first tensor moved there)."""
    from alexnet.errors import UserError
    from alexnet.parallel.distributed import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1) and pick_device("cuda", local_rank=3).index == 1
    with pytest.raises(UserError, match="device cuda:5: this machine's CUDA GPUs are cuda:0 to cuda:1"):
        pick_device("cuda:5")


def test_a_run_stopped_before_its_first_save_can_be_started_again(tiny_folder: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A NaN (or an out-of-memory) at the first steps leaves config.yaml and no checkpoint: once that directory
    could neither be resumed ("no checkpoints") nor reused ("already holds a run")."""
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--out", str(out), *FAST]
    assert main([*args, "--set", "optim.lr=1e12"]) == 2
    assert "no checkpoint was written yet" in capsys.readouterr().err and (out / "config.yaml").is_file()
    assert main(["train", "--resume", str(out)]) == 2
    assert f"start it again with --out {out}" in capsys.readouterr().err
    assert main(args) == 0
    assert ckpt_io.load(out / "checkpoints" / "last.pt")["config"]["optim"]["lr"] < 1  # the new start's config
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err  # now it has something to lose


def test_a_disk_that_fills_at_the_first_save_is_named_and_the_run_starts_again(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save's "unexpected pos" on a full disk was an internal error, and the epoch row written before the
    failed save made the folder neither resumable ("no checkpoints") nor startable ("already holds a run")."""
    from .conftest import fill_the_disk

    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_folder), "--out", str(out), *FAST]
    with monkeypatch.context() as m:
        fill_the_disk(m, after=1_000_000, under=str(out / "checkpoints"))
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not write checkpoint" in err and "No space left on device" in err, err
    assert not list((out / "checkpoints").iterdir())  # no half-written file left
    assert main(args) == 0  # the space freed, the same command starts it again
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # the new start's row only


def test_unexpected_failures_and_out_of_memory_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import tempfile

    import alexnet.commands.summary

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a command without a run writes a traceback

    def oom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(alexnet.commands.summary, "summarize", oom)
    assert main(["summary"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "alexnet summary: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower the image size\n"
    )
    from alexnet.errors import describe  # what each command has to lower is what it names

    said = {c: describe(torch.OutOfMemoryError("CUDA out of memory"), [c, "x"]) for c in ("train", "predict")}
    assert said["train"] == ("error: out of memory (CUDA out of memory); lower --batch-size (or the image size), or use "
                             "train.amp=bf16/fp16 where the device has it", 2)  # fmt: skip
    assert said["predict"] == ("error: out of memory (CUDA out of memory); lower --batch-size (or the image size)", 2)

    def broken(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise KeyError("preprocess")

    monkeypatch.setattr(alexnet.commands.summary, "summarize", broken)
    assert main(["summary"]) == 1
    err = capsys.readouterr().err
    (log,) = tmp_path.glob("alexnet-crash-*.log")
    assert (
        err
        == f"alexnet summary: internal error: KeyError: 'preprocess'; traceback written to {log} (please report it)\n"
    )
    text = log.read_text()
    assert text.startswith("--- ") and "alexnet summary [alexnet " in text.splitlines()[0]
    assert "Traceback (most recent call last)" in text and "in broken" in text and "KeyError: 'preprocess'" in text
    monkeypatch.setenv("ALEXNET_DEBUG", "1")
    with pytest.raises(KeyError, match="preprocess"):  # the traceback on the terminal instead
        main(["summary"])
    monkeypatch.delenv("ALEXNET_DEBUG")

    def cpu_oom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202 - what the CPU allocator raises (e.g. --test-size 100000)
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 9481462518528 bytes. Error code 12 (Cannot allocate memory)"
        )

    def host_oom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202 - Python's own (numpy, PIL: prepare --size 100000)
        raise MemoryError()

    for fn, said in ((cpu_oom, "out of memory (8830.3 GiB asked for); lower the image size"),
                     (host_oom, "out of memory (no more could be had); lower the image size")):  # fmt: skip
        monkeypatch.setattr(alexnet.commands.summary, "summarize", fn)
        assert main(["summary"]) == 2  # summary has no --batch-size to lower: the message names what it has
        assert capsys.readouterr().err.strip() == f"alexnet summary: error: {said}"


def test_our_bugs_are_internal_errors_and_the_users_paths_their_errors(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Every ValueError and OSError was once the user's (exit 2, "error: ..."), so a bug of ours, met in a library
    call, read as the user's mistake. Now a train run's bug is an internal error whose traceback is in the run's
    crash.log, and an OS error on a path the command line gave (or one inside it) is still the user's."""
    import tempfile

    import torch.nn.functional as F

    def bug(*_a, **_k):  # noqa: ANN002, ANN003, ANN202 - what a wrong target shape makes cross_entropy say
        raise ValueError("Expected input batch_size (64) to match target batch_size (63).")

    monkeypatch.setattr(F, "cross_entropy", bug)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--set", "data.workers=0"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the run's log lines)
    assert last == ("alexnet train: internal error: ValueError: Expected input batch_size (64) to match target "
                    f"batch_size (63).; traceback written to {run / 'crash.log'} (please report it)")  # fmt: skip
    text = (run / "crash.log").read_text()
    assert f"alexnet train --out {run} --epochs 1" in text.splitlines()[0]
    assert "in train_one_epoch" in text and text.rstrip().endswith("ValueError: Expected input batch_size (64) to "
                                                                   "match target batch_size (63).")  # fmt: skip
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    val, labels = tmp_path / "val", tmp_path / "labels.csv"
    val.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(val / "ILSVRC2012_val_00000001.JPEG")
    labels.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    out = tmp_path / "sorted"
    for where, code, says in [(out / "n01440764" / "x", 2, f"error: {out / 'n01440764' / 'x'}: Permission denied"),
                              (tmp_path / "elsewhere", 1, "internal error: PermissionError: [Errno 13] Permission denied")]:  # fmt: skip

        def denied(*_a, where: Path = where, **_k) -> None:  # noqa: ANN002, ANN003
            raise PermissionError(13, "Permission denied", str(where))

        monkeypatch.setattr("shutil.copy2", denied)
        assert main(["prepare-val", str(val), "--labels", str(labels), "--out", str(out), "--mode", "copy"]) == code
        err = capsys.readouterr().err
        assert err.startswith(f"alexnet prepare-val: {says}") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("filename, argv, code", [
    ("/data/imagenet/train/n01/x.JPEG", ["train", "--data", "/data/imagenet"], 2),  # inside a folder given
    ("/data/imagenet/train/n01/x.JPEG", ["train", "--set", "data.path=/data/imagenet/"], 2),
    ("/runs/a/checkpoints/last.pt", ["train", "--out=/runs/a"], 2),
    ("/photos/2024/a.jpg", ["predict", "run", "/photos/*/a.jpg"], 2),  # a glob's folder
    ("/data/imagenet-old/x.JPEG", ["train", "--data", "/data/imagenet"], 1),  # a neighbour, not inside
    ("/usr/lib/python3/site-packages/torch/x.so", ["train", "--data", "/data"], 1),
])  # fmt: skip
def test_an_os_error_is_the_users_on_the_paths_they_gave(filename: str, argv: list[str], code: int,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import tempfile

    from alexnet.errors import describe

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    said, got = describe(PermissionError(13, "Permission denied", filename), argv)
    assert got == code and (said == f"error: {filename}: Permission denied" if code == 2 else "internal error" in said)
    full = OSError(28, "No space left on device", "/somewhere/else")  # a full disk is the machine's, anywhere
    assert describe(full, argv) == ("error: /somewhere/else: No space left on device", 2)


def test_a_user_error_raised_in_a_data_loader_worker_is_its_own_line() -> None:
    """torch re-raises a worker's exception with the worker's traceback as its message."""
    from torch._utils import ExceptionWrapper

    from alexnet.errors import UserError, describe

    try:
        raise UserError("/data/train/x.jpg: the image went away")
    except UserError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(UserError) as e:
        wrapped.reraise()
    assert str(e.value).startswith("Caught UserError in DataLoader worker process 0")
    assert describe(e.value) == ("error: /data/train/x.jpg: the image went away", 2)


@pytest.mark.parametrize("args, says", [
    (["summary", "--input-size", "0"], "argument --input-size: must be at least 1, got 0"),
    (["summary", "--input-size", "big"], "argument --input-size: expected a whole number, got 'big'"),
    (["predict", "torchvision", "x.png", "--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
    (["explain", "torchvision", "x.png", "--out", "e.png", "--patch", "0"], "argument --patch: must be at least 1"),
    (["pca-stats", "--data", "d", "--size", "0"], "argument --size: must be at least 1, got 0"),
    (["prepare", "--data", "d", "--out", "s", "--format", "jpeg", "--quality", "500"], "JPEG quality is 1-100, got 500"),
    (["prepare", "--data", "d", "--out", "s", "--workers", "-5"], "--workers: must be 0 or more (or -1: one per core)"),
    (["figures", "run", "--out", "f", "--workers", "-2"], "--workers: must be 0 or more (or -1: one per core), got -2"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
])  # fmt: skip
def test_a_mistake_in_the_arguments_is_one_line(args: list[str], says: str, capsys: pytest.CaptureFixture) -> None:
    """Each was once taken (0 as "the default", any negative --workers as -1), or failed late: pca-stats --size 0
    showed a worker's traceback. The pointer is to the subcommand's --help, where its options are listed."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and f"(see alexnet {args[0]} --help)" in err


def test_a_bare_command_lists_the_subcommands(capsys: pytest.CaptureFixture) -> None:
    """`alexnet` alone once said only "the following arguments are required: COMMAND"."""
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: alexnet") and all(c in out for c in ("train", "evaluate", "import-weights"))


def test_torchvision_weights_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    from torchvision.models import AlexNet_Weights

    def offline(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    assert main(["predict", "torchvision", str(img)]) == 2
    err = capsys.readouterr().err
    assert "could not load torchvision's AlexNet weights" in err and "Traceback" not in err
