"""Shared helpers for the benchmark scripts: timing and a matrix-multiply peak."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def timeit(fn: Callable[[], object], warmup: int = 2, iters: int = 5, sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048) -> float:
    """Measured GFLOP/s of an n x n x n matrix multiply (2 n^3 flops)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    s = timeit(lambda: a @ b, warmup=2, iters=5, sync=sync)
    return 2 * n**3 / s / 1e9


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def batch_args() -> argparse.Namespace:
    """--batch, --iters, --device: the options every synthetic-batch benchmark takes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap.parse_args()
