"""Measured defaults for the compute path: what ``auto`` means for train.amp, train.channels_last and
train.compile on the device a run actually gets. The resolved values are written to the run's
config.yaml, so a resumed run keeps them wherever it continues.

Measurements behind each choice (docs/results.md has the tables and commands):
- bf16 autocast + channels_last: 2.10x the fp32 eager step on a 2-core AVX-512 BF16 CPU
  (benchmarks/train_step.py); on CPUs without native bf16 it is emulated and slower, so fp32 there.
  On CUDA GPUs with bf16 (Ampere and later) it is the standard fast path.
- torch.compile (benchmarks/results/gpu-h200-run1.log, one H200, batch 512, bf16 + channels_last): alexnet_owt 43,062 ->
  50,824 img/s after 28 s of compiling, so it pays after ~8M training images; the paper net (LRN)
  9,886 -> 19,499 img/s after 33 s, paying after ~0.7M. "auto" compiles on CUDA when the run will
  train on more images than that (1M with LRN, 10M without; the eval-mode graph compiles too).
  On CPUs it stays off: on the 2-core AVX-512 BF16 machine the compiled alexnet_owt step (bf16,
  channels_last, batch 64) ran at 64.2 img/s against 77.2 eager, after 17 s of compiling; convolutions,
  73 % of a step per torch.profiler, are oneDNN calls either way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import sys

import torch
from torch import nn

from ..config import TrainConfig
from ..models.lrn import GroupedLRN, triton_runs


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":  # not torch.cuda.is_bf16_supported(): by default it counts emulation (pre-Ampere)
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        return bool(
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    return False


def auto_amp(device: torch.device) -> str:
    """bf16 where the device computes it natively (AVX-512 BF16/AMX CPUs, CUDA since Ampere, sm_80+); fp16 with
    the GradScaler on Volta and Turing (sm_70-75: V100, T4), which have fp16 tensor cores and no bf16; fp32
    elsewhere (older GPUs, CPUs without native bf16, MPS)."""
    if native_bf16(device):
        return "bf16"
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 7:
        return "fp16"
    return "none"


def resolve(t: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of ``t`` with every ``auto`` setting replaced by its value on ``device``."""
    amp = t.amp
    if amp == "auto":
        amp = auto_amp(device)
    channels_last = t.channels_last
    if channels_last is None:
        channels_last = device.type in ("cuda", "cpu")  # cuDNN and oneDNN both prefer NHWC convolutions
    sync_every = t.sync_every or auto_sync_every(device, t.log_every)
    return dataclasses.replace(t, amp=amp, channels_last=channels_last, sync_every=sync_every)


def auto_sync_every(device: torch.device, log_every: int) -> int:
    """train.sync_every=auto: every step on CPUs, where a read of a value costs nothing (the host computed it);
    on GPUs every ``log_every`` steps (50 when 0), since each read waits for the device's queue to drain: one H200
    run measured 23k img/s with a read every step."""
    return 1 if device.type == "cpu" else log_every or 50


COMPILE_PAYS_AFTER = {True: 1_000_000, False: 10_000_000}  # training images, by "the model has LRN"


def has_lrn(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.LocalResponseNorm, GroupedLRN)) for m in model.modules())


def compile_pays(device: torch.device, lrn: bool, train_images: int, towers: bool = False) -> bool:
    """train.compile=auto: whether torch.compile's one-off cost is repaid within this run (on CUDA, where
    inductor's Triton kernels run: not on GPUs before compute capability 7.0 nor without Triton, as on Windows)."""
    return device.type == "cuda" and not towers and train_images >= COMPILE_PAYS_AFTER[lrn] and triton_runs(device)


def keep_freed_memory(device: torch.device) -> bool:
    """On Linux/glibc CPUs: have malloc keep freed memory for reuse (``M_MMAP_MAX=0``, no trimming) instead of
    unmapping every block over 32 MB on free, so that the next step's activations of the same sizes are not
    page-faulted in again. Measured on the 2-core AVX2 EPYC machine: cloning a 75 MB tensor 47 -> 12 ms; the
    paper network's fp32 training step (batch 64) 15.2 -> 17.6 img/s; torchvision's and alexnet_owt's steps
    unchanged within noise (benchmarks/train_step.py). Process-wide; returns whether it was applied."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): leave it alone
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
