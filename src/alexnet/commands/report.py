"""`alexnet report RUN`: report.md and report.html in the run directory, with the figures embedded."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from ..data.classes import is_imagenet
from ..engine.runlog import read_metrics, read_run_config, setup_logging
from ..errors import UserError
from ..inference.plots import make_figures
from ..io.atomic import atomic_write_text
from ..io.weights import load_weights
from ..models import PAPER_PUBLISHED
from ..parallel.distributed import pick_device
from ..trackers import attach_files

Block = tuple[str, Any]  # (kind, value); the value's type is the kind's: see build_report

FIGURE_TITLES = {
    "curves": "Training curves",
    "filters": "conv1 kernels (paper Fig. 3)",
    "predictions": "Top-5 predictions (paper Fig. 4, left)",
    "neighbours": "Nearest neighbours in fc7 space (paper Fig. 4, right)",
    "confusion": "Confusion",
}


def build_report(run_dir: Path, class_names: list[str], figures_dir: Path) -> list[Block]:
    """The report as blocks: ("h1"|"h2"|"h3"|"p", text), ("table", rows), ("img", (alt, path)), ("code", text)."""
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: no metrics.jsonl yet; train first")
    cfg = read_run_config(run_dir)
    validated = [r for r in rows if "val_top1" in r]  # train.eval_every may skip epochs; the last is validated
    if not validated:
        raise UserError(f"{run_dir}: no validated epoch yet (train.eval_every skips epochs; the last one is "
                        f"validated): `alexnet train --resume {run_dir}` goes on")  # fmt: skip
    best = max(validated, key=lambda r: r["val_top1"])
    last = validated[-1]
    wall = sum(r["seconds"] for r in rows)
    ips = sum(r["images_per_sec"] for r in rows) / len(rows)
    blocks: list[Block] = [("h1", f"Run report: {run_dir.name}")]
    data = cfg["data"]["path"] or "built-in digits"
    blocks.append(("p", f"Model {cfg['model']['name']}, recipe {cfg.get('recipe', 'custom')}, data {data}, "
                        f"{len(class_names)} classes, {_epochs(len(rows), cfg['train']['epochs'], run_dir)}."))  # fmt: skip
    table = [["", "top-1 acc", "top-5 acc", "top-1 err", "top-5 err", "val loss", "epoch"]]
    for label, r in (("best", best), ("final", last)):
        table.append([label, f"{100 * r['val_top1']:.2f} %", f"{100 * r['val_top5']:.2f} %",
                      f"{100 - 100 * r['val_top1']:.2f} %", f"{100 - 100 * r['val_top5']:.2f} %",
                      f"{r['val_loss']:.4f}", str(r["epoch"])])  # fmt: skip
    p = PAPER_PUBLISHED
    paper_note = "" if is_imagenet(class_names) else " (ImageNet; not comparable with this dataset)"
    table.append([f"{p['what']}{paper_note}", f"{100 * p['top1']:.1f} %", f"{100 * p['top5']:.1f} %",
                  f"{100 - 100 * p['top1']:.1f} %", f"{100 - 100 * p['top5']:.1f} %", "", "90"])  # fmt: skip
    blocks += [("h2", "Results"), ("table", table)]
    blocks.append(("p", f"Throughput {ips:,.0f} training images/s (mean over epochs); wall time {wall / 60:.1f} min "
                        f"(training + validation)."))  # fmt: skip
    blocks.append(("h2", "Figures"))
    for name, title in FIGURE_TITLES.items():
        f = figures_dir / f"{name}.png"
        if f.is_file():
            blocks += [("h3", title), ("img", (title, f.relative_to(run_dir).as_posix()))]
    blocks += [("h2", "Configuration"), ("code", yaml.safe_dump(cfg, sort_keys=False))]
    blocks += [("h2", "Metrics per epoch"), ("code", "\n".join(json.dumps(r) for r in rows))]
    return blocks


def _epochs(done: int, planned: int, run_dir: Path) -> str:
    """ "2 epochs", or, for a run that stopped before its plan, "2 of 5 epochs" and how to go on."""
    if done >= planned:
        return f"{done} epoch{'s' * (done != 1)}"
    return f"{done} of {planned} epochs (not finished: `alexnet train --resume {run_dir}` goes on)"


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "table":
            rows = value
            out.append("| " + " | ".join(rows[0]) + " |")
            out.append("|" + "---|" * len(rows[0]))
            out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
            out.append("")
        elif kind == "img":
            alt, path = value
            out.append(f"![{alt}]({path})\n")
        elif kind == "code":
            out.append(f"```\n{value.rstrip()}\n```\n")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    e = html.escape
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(value)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(value)}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in value[0])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in value[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            alt, path = value
            body.append(f'<img src="{e(path)}" alt="{e(alt)}" style="max-width:100%">')
        elif kind == "code":
            body.append(f"<pre>{e(value)}</pre>")
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>alexnet report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def write_report(run_dir: Path, class_names: list[str], figures_dir: Path) -> tuple[Path, Path]:
    blocks = build_report(run_dir, class_names, figures_dir)
    md, page = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks))
    atomic_write_text(page, to_html(blocks))
    return md, page


def run_report(run: Path, data: str | None = None, data_figures: bool = True, max_val: int = 2000,
               max_train: int = 5000, device: str = "auto") -> int:  # fmt: skip
    """`alexnet report`: the figures into RUN/figures, then RUN/report.md and RUN/report.html; report.md goes to
    the run's tracker runs too."""
    setup_logging(verbose=False)
    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"{run}: not a run directory (no metrics.jsonl)")
    dev = pick_device(device)
    w = load_weights(str(run), dev)
    figs = run / "figures"
    which = ["curves", "filters", "predictions", "neighbours", "confusion"] if data_figures else ["curves", "filters"]
    make_figures(w, run, data, figs, which, dev, max_val, max_train, 0)
    md, page = write_report(run, w.class_names, figs)
    print(md)
    print(page)
    attach_files(run, [md])  # to the run's MLflow / W&B runs, if it has any (trackers.json)
    return 0
