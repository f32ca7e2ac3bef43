"""scripts/gpu_check.sh, the one prepared script for a machine with a GPU, run at toy size on the CPU
(--dry-run): every step it takes there must still work here, so that a GPU's few minutes are not lost to a
script that rotted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_step_at_toy_size(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    log = (tmp_path / "gpu-check-dry-run.log").read_text()
    for step in ("train", "resume", "evaluate", "predict", "export", "torchrun", "towers", "train_steps", "lrn",
                 "store_epochs", "host", "deterministic"):  # fmt: skip
        assert f"PASS {step} " in log, (step, log[-3000:])
    assert "host overhead:" in log and "0 section(s) failed" in log and "0 failure(s)" in log
