"""What `train.bn_recalibrate` buys: finished runs re-validated after it, against their own last validation.

    python benchmarks/recalibrate.py --store /tmp/imnette-store RUN [RUN ...] [--images 1024 3072]

Each RUN is a finished `alexnet train` run trained without it (e.g. the 16-minute runs of benchmarks/budget.py).
Its last checkpoint's BatchNorm statistics are recomputed exactly as a run's end does it
(engine/precise_bn.py: the first N training images of the run's fixed shuffle, in the validation's view, the
final weights), then the validation split is evaluated again. The baseline is the run's own last validation
(metrics.jsonl), the same weights with the statistics training left: a paired difference per run. Also prints
`evaluate --tta flip` on the run's own statistics, the other evaluation-side lever, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

from alexnet.config import Config  # noqa: E402
from alexnet.data.batches import Batches  # noqa: E402
from alexnet.data.loaders import build_eval_data, open_split  # noqa: E402
from alexnet.engine.precise_bn import batches_for, recompute, validation_views  # noqa: E402
from alexnet.inference import compute_path, evaluate  # noqa: E402
from alexnet.io.weights import load_weights  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--store", required=True)
    ap.add_argument("--images", nargs="+", type=int, default=[1024])
    ap.add_argument("--flip", action="store_true", help="also evaluate with --tta flip (twice a validation)")
    a = ap.parse_args()
    dev = torch.device("cpu")
    rows, gains = [["run", "own val top-1 %", *(f"recalibrated {n} %" for n in a.images), "flip %"]], {}
    for run in a.runs:
        own = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_top1" in x][-1]
        cells = [str(run), f"{100 * own['val_top1']:.2f}"]
        for n in a.images:
            w = load_weights(str(run / "checkpoints" / "last.pt"), dev)
            cfg, path = w.config or Config(), compute_path(w.model, dev, "auto")
            val = build_eval_data(a.store, w.preprocess, w.class_names, cfg.train.batch_size)
            train = open_split(a.store, "train", w.preprocess.resize, w.class_names)
            batches = Batches(train.dataset(w.preprocess.resize), cfg.train.batch_size, True, cfg.train.seed)
            norm, crop = w.preprocess.normalizer(), w.preprocess.crop
            k = batches_for(n, batches.batch_size, batches.num_samples)  # as a run's end picks them
            t0 = time.perf_counter()
            recompute(w.model, validation_views(batches, k, norm, crop, dev, path.channels_last), dev, path.amp)
            took = time.perf_counter() - t0
            res = evaluate(w.model, val, norm, crop, len(w.class_names), dev, "center", path.amp, path.channels_last)
            gains.setdefault(n, []).append(100 * (res.top1 - own["val_top1"]))
            cells.append(f"{100 * res.top1:.2f} ({gains[n][-1]:+.2f}; {took:.0f} s)")
        if a.flip:
            w = load_weights(str(run / "checkpoints" / "last.pt"), dev)
            t0 = time.perf_counter()
            res = evaluate(w.model, val, w.preprocess.normalizer(), w.preprocess.crop, len(w.class_names), dev,
                           "flip", path.amp, path.channels_last)  # fmt: skip
            gains.setdefault("flip", []).append(100 * (res.top1 - own["val_top1"]))
            cells.append(f"{100 * res.top1:.2f} ({gains['flip'][-1]:+.2f}; {time.perf_counter() - t0:.0f} s)")
        else:
            cells.append("-")
        rows.append(cells)
        print(rows[-1], flush=True)
    print(table(rows))
    for what, g in gains.items():
        print(f"{what}: {statistics.mean(g):+.2f} points top-1 on average over {len(g)} runs "
              f"({min(g):+.2f} to {max(g):+.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
