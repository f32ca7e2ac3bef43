"""Time to accuracy: `alexnet train --budget B` on Imagenette for several budgets, and levers at one budget.

    python benchmarks/budget.py --store /tmp/imnette-store [--budgets 4m 8m 16m 32m] [--lever-budget 8m]
        [--levers fixed_res] [--test-sizes 227] [--out /tmp/budget-runs] [--figure docs/figures/budget.png]
    python benchmarks/budget.py --plot RUN [RUN ...] --figure docs/figures/budget.png  # runs made earlier
    python benchmarks/budget.py --store /tmp/imnette-store --budgets 6m --levers --hog 150:60  # a minute's load

``--base="--batch-size 128 --set optim.lr=0.04"`` (with ``=``) adds arguments to every run, baseline and levers (a lever's
own arguments come after, so they win): the levers in benchmarks/results/budget-cpu-avx2.log were measured that way,
against the recipe before it took batch 64.

Each run is a separate `alexnet train --data STORE --recipe fast --budget B` process (the budget counts from the
process's start, imports included), timed from outside too. The store is made once beforehand
(`alexnet prepare --data ../shared/data/imagenette2-224 --out /tmp/imnette-store`; its time is printed by
prepare). Levers change one recipe value against the `fast` recipe's run at the same budget (the baseline,
run in the same invocation): each prints its top-1 difference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402

AVX2 = "2-core AVX2 CPU, fp32"  # the machine of budget-cpu-avx2.log's runs, for the figure's title

LEVERS = {  # one recipe value changed against `fast` (benchmarks/results/budget-cpu-avx2.log)
    "fixed_res": ["--set", "data.res_start=none"],  # no progressive resizing: every epoch at 227 px
    "eval_last": ["--set", "train.eval_every=0"],  # validate after the last epoch only
    "no_label_smoothing": ["--set", "optim.label_smoothing=0"],
    "min_scale_0.08": ["--set", "data.min_scale=0.08"],  # torchvision's RandomResizedCrop default
    "batch_256": ["--batch-size", "256", "--set", "optim.lr=0.08"],  # linear scaling rule (Goyal et al. 2017)
    "batch_64": ["--batch-size", "64", "--set", "optim.lr=0.02"],  # the same rule, twice the steps
    "batch_32": ["--batch-size", "32", "--set", "optim.lr=0.01"],
    "ema_0.1": ["--set", "train.ema=0.1"],  # validate an EMA of the weights, half-life 10 % of the run
    "weight_decay_5e-4": ["--set", "optim.weight_decay=5e-4"],  # the paper's value (fast: 5e-5)
    "lr_x2": ["--set", "optim.lr=0.04"],  # twice the linearly scaled lr at batch 64
    # the ramp ends at 163 (or 195) px, validation stays at 227 (data.res_end), as FFCV's ResNet-50 recipes train
    # up to 192 px and validate at 256. Measured (benchmarks/results/budget-cpu-avx2.log): the gain is the cheaper steps; with
    # --test-sizes 163 195 the 163 px run scored the same at 163, 195 and 227
    "res_end_163": ["--set", "data.res_end=163"],
    "res_end_195": ["--set", "data.res_end=195"],
    # no dropout in fc6/fc7 (fast: 0.5, the paper's): short runs are far from converged (16 minutes: 4 epochs,
    # val top-1 still rising); Smith (2018): with one-cycle's large learning rates, reduce other regularisation
    "dropout_0": ["--set", "model.dropout=0"],
    # lower still: every epoch at 131 px (no ramp), or a ramp 99 -> 131; validation stays at 227 (use --test-sizes
    # to see the smaller test sizes the train/test resolution discrepancy suggests, Touvron et al. 2019)
    "res_end_131": ["--set", "data.res_end=131"],
    "res_99_131": ["--set", "data.res_start=99", "--set", "data.res_end=131"],
    # milder crops still: a run of 3-5 epochs is far from over-fitting, and augmentation strength is usually
    # matched to the schedule's length (Steiner et al. 2021, "How to train your ViT": less for shorter runs)
    "min_scale_0.6": ["--set", "data.min_scale=0.6"],
    "lr_half": ["--set", "optim.lr=0.01"],  # half the linearly scaled lr at batch 64 (lr_x2 lost)
    # a shorter warm-up: half an epoch (~14 % of a 16-minute run) instead of the recipe's 2 epochs capped at 30 %
    # of the run (~1 epoch there); with BatchNorm, Goyal et al. 2017 warm up for 5 of 90 epochs
    "warmup_0.5": ["--set", "schedule.warmup_epochs=0.5"],
}


def _read(out: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "plan.json").read_text())


def finished_run(out: Path) -> dict:
    """A run made earlier (its metrics.jsonl and plan.json), for the figure."""
    rows, plan = _read(out)
    return {"budget": f"{plan['budget_s'] / 60:g}m", "rows": rows, "plan": plan}


def hogs(start: float, seconds: float) -> threading.Timer:
    """From ``start`` s on, for ``seconds`` (inf: to the end), one busy process per core beside the run: a laptop's
    or a shared node's background load (on 2 cores, the run's steps take about twice as long)."""
    procs: list[subprocess.Popen] = []

    def begin() -> None:
        procs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1))
        if seconds != float("inf"):
            threading.Timer(seconds, lambda: [p.kill() for p in procs]).start()

    timer = threading.Timer(start, begin)
    timer.procs = procs  # type: ignore[attr-defined]
    timer.start()
    return timer


def run(store: Path, budget: str, out: Path, extra: list[str], hog: tuple[float, float] | None = None) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "alexnet", "train", "--data", str(store), "--recipe", "fast", "--budget", budget,
           "--out", str(out), *extra]  # fmt: skip
    log = out.parent / f"{out.name}.log"  # not with_suffix: "ema_0.1-8m" has a dot
    timer = hogs(*hog) if hog else None
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if timer is not None:
        timer.cancel()
        for p in timer.procs:  # type: ignore[attr-defined]
            p.kill()
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {log}")
    rows, plan = _read(out)
    return {"budget": budget, "wall": wall, "rows": rows, "plan": plan, "top1": rows[-1]["val_top1"],
            "top5": rows[-1]["val_top5"], "tested": {}}  # fmt: skip


def test_at(r: dict, out: Path, sizes: list[int]) -> None:
    """The run's last checkpoint evaluated at each of ``sizes`` (`alexnet evaluate --test-size`), into r["tested"]."""
    for size in sizes:
        cmd = [sys.executable, "-m", "alexnet", "evaluate", str(out / "checkpoints" / "last.pt"), "--test-size",
               str(size), "--json"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        r["tested"][size] = json.loads(done.stdout.splitlines()[-1])["top1"]


def describe(name: str, r: dict) -> list[str]:
    b = r["plan"]["budget_s"]
    return [name, r["budget"], f"{r['wall']:.0f} s ({100 * r['wall'] / b:.1f} %)", str(r["plan"]["max_steps"]),
            str(len(r["rows"])), " ".join(str(s) for s in r["plan"]["sizes"]), f"{100 * r['top1']:.1f}",
            f"{100 * r['top5']:.1f}", " ".join(f"{s}px {100 * t:.1f}" for s, t in r["tested"].items()) or "-"]  # fmt: skip


def figure(
    results: list[dict],
    path: Path,
    before: list[dict] | None = None,
    label: str = "before",
    machine: str = AVX2,
) -> None:
    """Val top-1 against wall-clock minutes, one line per run; ``before`` (runs of an earlier recipe) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for runs, style, tag in ((results, "o-", ""), (before or [], "s--", f" ({label})")):
        for r in runs:
            start = r["plan"]["elapsed_s"] / 60
            minutes = [start + m / 60 for m in itertools.accumulate(row["seconds"] for row in r["rows"])]
            points = [(m, 100 * row["val_top1"]) for m, row in zip(minutes, r["rows"]) if "val_top1" in row]
            ax.plot(*zip(*points), style, label=f"--budget {r['budget']}{tag}", alpha=1.0 if not tag else 0.6)
    ax.set_xlabel("wall-clock minutes from the start of `alexnet train`")
    ax.set_ylabel("Imagenette val top-1 (%)")
    ax.set_title(f"alexnet train --recipe fast --budget B ({machine})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--plot", type=Path, nargs="*", help="draw the figure from these finished runs only")
    ap.add_argument("--before", type=Path, nargs="*", default=[], help="with --plot: runs of an earlier recipe, dashed")
    ap.add_argument("--before-label", default="dropout 0.5", help="what the --before runs differ in")
    ap.add_argument("--budgets", nargs="*", default=["4m", "8m", "16m", "32m"])
    ap.add_argument("--lever-budget", default="8m")
    ap.add_argument("--levers", nargs="*", default=["fixed_res"], choices=sorted(LEVERS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/budget-runs"))
    ap.add_argument("--base", default="", help="arguments added to every run (before a lever's own)")
    ap.add_argument("--figure", type=Path)
    ap.add_argument("--machine", default=AVX2, help="the machine, for the figure's title")
    ap.add_argument("--test-sizes", type=int, nargs="*", default=[], help="also evaluate every run at these sizes")
    ap.add_argument("--hog", metavar="START:SECONDS", help="a CPU hog from START s for SECONDS (inf: to the end), "
                    "one busy process per core, beside each budget run (the plan's checks against a load)")  # fmt: skip
    a = ap.parse_args()
    hog = tuple(float(v) for v in a.hog.split(":")) if a.hog else None
    if a.plot:
        figure([finished_run(p) for p in a.plot], a.figure or Path("budget.png"), [finished_run(p) for p in a.before],
               a.before_label, a.machine)  # fmt: skip
        return
    if a.store is None:
        ap.error("--store is required (or --plot)")
    a.out.mkdir(parents=True, exist_ok=True)
    base = shlex.split(a.base)
    header = ["run", "budget", "wall (of budget)", "steps", "epochs", "crops per epoch", "top-1 %", "top-5 %",
              "top-1 % at --test-size"]  # fmt: skip
    rows, results = [header], {}
    for budget in a.budgets:
        name = f"fast-{budget}" + (f"-hog-{a.hog.replace(':', '-')}" if hog else "")
        results[budget] = run(a.store, budget, a.out / name, base, hog)  # type: ignore[arg-type]
        test_at(results[budget], a.out / name, a.test_sizes)
        rows.append(describe("fast" + (f" (hog {a.hog})" if hog else ""), results[budget]))
        print(table(rows), flush=True)
    for lever in a.levers:
        if a.lever_budget not in results:
            results[a.lever_budget] = run(a.store, a.lever_budget, a.out / f"fast-{a.lever_budget}", base)
            test_at(results[a.lever_budget], a.out / f"fast-{a.lever_budget}", a.test_sizes)
            rows.append(describe("fast", results[a.lever_budget]))
        r = run(a.store, a.lever_budget, a.out / f"{lever}-{a.lever_budget}", [*base, *LEVERS[lever]])
        test_at(r, a.out / f"{lever}-{a.lever_budget}", a.test_sizes)
        rows.append(describe(lever, r))
        delta = 100 * (r["top1"] - results[a.lever_budget]["top1"])
        print(table(rows), f"\n{lever}: {delta:+.1f} points top-1 against fast at {a.lever_budget}", flush=True)
    if a.figure:
        figure([results[b] for b in a.budgets], a.figure, machine=a.machine)
        print(f"wrote {a.figure}")


if __name__ == "__main__":
    main()
