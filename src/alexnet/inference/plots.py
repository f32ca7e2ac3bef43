"""The figures: the paper's Figures 3 and 4 for your network, training curves, confusion (PNG, matplotlib Agg).
Used by the `figures` and `report` commands.

All pixels derive from the model and the data: nothing is drawn from stored pictures.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.batches import TensorSource  # noqa: E402
from ..data.classes import display_name  # noqa: E402
from ..data.folder import default_workers  # noqa: E402
from ..data.keyed_random import seeded_sample  # noqa: E402
from ..engine.runlog import read_metrics  # noqa: E402
from ..errors import UserError  # noqa: E402
from ..io.atomic import atomic_savefig, atomic_write_text  # noqa: E402
from ..io.weights import Loaded  # noqa: E402
from . import compute_path, feature_fn, predict_probs  # noqa: E402
from .occlusion import OcclusionMap, TopPatches, occlusion_map, top_patches  # noqa: E402

DEFAULT_FIGURES = ("filters", "predictions", "neighbours", "curves", "confusion")  # `figures` and `report`
FIGURES = (*DEFAULT_FIGURES, "occlusion", "units")  # a look inside: on request (seconds per image on a CPU)
DPI = 100
BATCH = 64  # images per forward pass of the figures that run the network


def figure_files(out: Path, which: list[str]) -> list[Path]:
    """The files the ``which`` figures write into ``out``: NAME.png each, and the neighbours' list beside theirs."""
    if unknown := sorted(set(which) - set(FIGURES)):
        raise UserError(f"unknown figure {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    return [out / f"{name}.{ext}" for name in which for ext in (("png", "json") if name == "neighbours" else ("png",))]


@dataclass
class ImageSet:
    """uint8 images at the weights' resize size, labels, and names (files, or ``digits[i]``)."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,)
    names: list[str]


def _grid_kernels(w: torch.Tensor, cols: int) -> np.ndarray:
    """(K, 3, k, k) -> one RGB mosaic, each kernel scaled to its own range (as the paper's Fig. 3)."""
    k = w.shape[-1]
    rows = math.ceil(w.shape[0] / cols)
    pad = 1
    canvas = np.ones((rows * (k + pad) + pad, cols * (k + pad) + pad, 3), dtype=np.float32)
    for i, kern in enumerate(w):
        a = kern.permute(1, 2, 0).float().numpy()
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a) + 0.5
        r, c = divmod(i, cols)
        canvas[pad + r * (k + pad) : pad + r * (k + pad) + k, pad + c * (k + pad) : pad + c * (k + pad) + k] = a
    return canvas


def conv1_weight(model: torch.nn.Module) -> torch.Tensor:
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return first.weight.detach().cpu()


def filters_figure(loaded: Loaded, out: Path) -> Path:
    w = conv1_weight(loaded.model)
    two_towers = loaded.variant in ("alexnet", "alexnet_bn") and w.shape[0] == 96
    cols = 16
    if two_towers:
        fig, axes = plt.subplots(2, 1, figsize=(10, 4.6), dpi=DPI)
        for ax, part, label in ((axes[0], w[:48], "tower A (GPU 1): kernels 0-47"),
                                (axes[1], w[48:], "tower B (GPU 2): kernels 48-95")):  # fmt: skip
            ax.imshow(_grid_kernels(part, cols), interpolation="nearest")
            ax.set_title(label, fontsize=10)
            ax.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(10, 0.6 + 0.62 * math.ceil(w.shape[0] / cols)), dpi=DPI)
        ax.imshow(_grid_kernels(w, cols), interpolation="nearest")
        ax.axis("off")
    k = w.shape[-1]
    fig.suptitle(f"{w.shape[0]} conv1 kernels of size {k}x{k}x3 ({loaded.variant}), as the paper's Figure 3")
    return _save(fig, out / "filters.png")


def _show(ax: plt.Axes, img: torch.Tensor) -> None:
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _label(loaded: Loaded, i: int, width: int = 24) -> str:
    name = loaded.class_names[i]
    text = display_name(name).split(" (n")[0]  # WordNet ids -> human names; other names unchanged
    return text if len(text) <= width else text[: width - 1] + "…"


def predictions_figure(loaded: Loaded, probs: torch.Tensor, val: ImageSet, out: Path, n: int = 8) -> Path:
    pick = torch.linspace(0, len(val.labels) - 1, min(n, len(val.labels))).round().long().unique()
    cols = 4
    rows = math.ceil(len(pick) / cols)
    fig = plt.figure(figsize=(3.2 * cols, 3.6 * rows), dpi=DPI)
    gs = fig.add_gridspec(rows * 2, cols, height_ratios=[2.2, 1.4] * rows, hspace=0.35)
    for j, i in enumerate(pick.tolist()):
        r, c = divmod(j, cols)
        ax = fig.add_subplot(gs[2 * r, c])
        _show(ax, val.images[i])
        truth = int(val.labels[i])
        ax.set_title(_label(loaded, truth), fontsize=9)
        bars = fig.add_subplot(gs[2 * r + 1, c])
        p, idx = probs[i].topk(min(5, probs.shape[1]))
        colours = ["tab:red" if int(k) == truth else "tab:blue" for k in idx]
        bars.barh(range(len(p))[::-1], p.numpy(), color=colours)
        bars.set_yticks(range(len(p))[::-1], [_label(loaded, int(k), 18) for k in idx], fontsize=7)
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
    fig.suptitle("Top-5 predictions on validation images (true class in red), as the paper's Figure 4 (left)")
    return _save(fig, out / "predictions.png")


def nearest(query: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k nearest bank rows for each query row (Euclidean, as the paper's Fig. 4)."""
    return torch.cdist(query.double(), bank.double()).topk(k, largest=False).indices


def neighbours_figure(loaded: Loaded, val: ImageSet, val_feats: torch.Tensor, train: ImageSet,
                      train_feats: torch.Tensor, out: Path, n: int = 5, k: int = 6) -> Path:  # fmt: skip
    queries = torch.linspace(0, len(val.labels) - 1, min(n, len(val.labels))).round().long().unique()
    idx = nearest(val_feats[queries], train_feats, min(k, len(train.labels)))
    fig, axes = plt.subplots(len(queries), idx.shape[1] + 1, figsize=(1.7 * (idx.shape[1] + 1), 1.8 * len(queries)),
                             dpi=DPI, squeeze=False)  # fmt: skip
    record = []
    for r, q in enumerate(queries.tolist()):
        _show(axes[r, 0], val.images[q])
        axes[r, 0].set_ylabel(_label(loaded, int(val.labels[q]), 14), fontsize=8)
        for c, t in enumerate(idx[r].tolist(), start=1):
            _show(axes[r, c], train.images[t])
        record.append({"query": val.names[q], "neighbours": [train.names[t] for t in idx[r].tolist()]})
    axes[0, 0].set_title("val image", fontsize=9)
    for c in range(1, idx.shape[1] + 1):
        axes[0, c].set_title(f"neighbour {c}", fontsize=9)
    fig.suptitle("Training images nearest in fc7 space (Euclidean), as the paper's Figure 4 (right)")
    atomic_write_text(out / "neighbours.json", json.dumps(record, indent=1))
    return _save(fig, out / "neighbours.png")


def curves_figure(run_dir: Path, out: Path) -> Path:
    """Loss, accuracy and lr per epoch, and val top-1 against wall-clock minutes (training and validation time,
    start-up excluded): what a budget buys."""
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: no metrics.jsonl rows to plot")
    ep = [r["epoch"] for r in rows]
    val = [r for r in rows if "val_top1" in r]  # train.eval_every may skip epochs
    vep = [r["epoch"] for r in val]
    fig = plt.figure(figsize=(8, 11), dpi=DPI)
    axes = [fig.add_subplot(5, 1, 1)]
    axes += [fig.add_subplot(5, 1, i, sharex=axes[0]) for i in range(2, 5)]
    axes[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    axes[0].plot(vep, [r["val_loss"] for r in val], "o-", label="val")
    axes[0].set_ylabel("loss")
    axes[1].plot(ep, [100 * r["train_top1"] for r in rows], "o-", label="train")
    axes[1].plot(vep, [100 * r["val_top1"] for r in val], "o-", label="val")
    axes[1].set_ylabel("top-1 accuracy (%)")
    axes[2].plot(vep, [100 * r["val_top5"] for r in val], "o-", color="tab:orange", label="val")
    axes[2].set_ylabel("top-5 accuracy (%)")
    axes[3].plot(ep, [r["lr"] for r in rows], "o-", color="tab:green")
    axes[3].set_ylabel("learning rate")
    axes[3].set_xlabel("epoch")
    if max(r["lr"] for r in rows) > 0 and min(r["lr"] for r in rows) > 0:
        axes[3].set_yscale("log")
    clock = fig.add_subplot(5, 1, 5)
    minutes = [m / 60 for m, r in zip(itertools.accumulate(r.get("seconds", 0.0) for r in rows), rows)
               if "val_top1" in r]  # fmt: skip
    clock.plot(minutes, [100 * r["val_top1"] for r in val], "o-", color="tab:red", label="val top-1")
    for m, r in zip(minutes, val):
        if "train_size" in r:
            clock.annotate(f"{r['train_size']}px", (m, 100 * r["val_top1"]), fontsize=7, xytext=(3, -10),
                           textcoords="offset points")  # fmt: skip
    clock.set_xlabel("wall-clock minutes (training + validation)")
    clock.set_ylabel("val top-1 (%)")
    axes.append(clock)
    for ax in axes[:3] + [clock]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves: {run_dir.name}")
    fig.tight_layout()
    return _save(fig, out / "curves.png")


def confusion_figure(loaded: Loaded, probs: torch.Tensor, labels: torch.Tensor, out: Path) -> Path:
    c = len(loaded.class_names)
    pred = probs.argmax(1)
    m = torch.zeros(c, c, dtype=torch.long)
    m.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    if c <= 50:
        fig, ax = plt.subplots(figsize=(max(6.0, 2 + 0.32 * c), max(5.0, 1.5 + 0.3 * c)), dpi=DPI)
        im = ax.imshow(m.numpy(), cmap="Blues")
        ticks = [_label(loaded, i, 16) for i in range(c)]
        ax.set_xticks(range(c), ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(c), ticks, fontsize=7)
        if c <= 20:
            for i in range(c):
                for j in range(c):
                    if m[i, j]:
                        ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                                color="white" if m[i, j] > m.max() / 2 else "black")  # fmt: skip
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(f"Confusion matrix ({len(labels)} validation images)")
    else:
        off = m.clone()
        off.fill_diagonal_(0)
        vals, flat = off.flatten().topk(20)
        rows = [[_label(loaded, int(f) // c, 30), _label(loaded, int(f) % c, 30), str(int(v))]
                for v, f in zip(vals, flat) if v > 0]  # fmt: skip
        fig, ax = plt.subplots(figsize=(9, 0.9 + 0.3 * max(1, len(rows))), dpi=DPI)
        ax.axis("off")
        if rows:
            table = ax.table(cellText=rows, colLabels=["true class", "predicted as", "images"], loc="center")
            table.auto_set_font_size(False)
            table.set_fontsize(8)
        ax.set_title(f"The 20 most confused pairs ({c} classes, {len(labels)} validation images)")
    return _save(fig, out / "confusion.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_savefig(fig, path, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


# --- orchestration: which data, which figures -----------------------------------------------------------


class _Source(torch.utils.data.Dataset):
    """(uint8 image, label, index) of one split, and a name per image (file, or ``digits/val[i]``)."""

    def __init__(self, split: object, size: int) -> None:
        from ..data.loaders import SplitData

        assert isinstance(split, SplitData)
        self.data, self.names = split.dataset(size), split.names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if isinstance(self.data, TensorSource):
            return self.data.x[i], int(self.data.y[i]), i
        return self.data[i]


def _sources(loaded: Loaded, data: str | None) -> tuple[_Source, _Source]:
    """The run's own data (its folder, store or the built-in digits), or ``data``; classes must be the model's."""
    from ..data.loaders import data_of, open_split

    path = data_of(data, loaded.config, loaded.source)
    size = loaded.preprocess.resize
    train = open_split(path, "train", size, check=False)
    val = open_split(path, "val", size, classes=train.class_names, check=False)
    if train.class_names != loaded.class_names:
        raise UserError(f"{path}: its classes differ from the model's ({len(loaded.class_names)} classes)")
    return _Source(train, size), _Source(val, size)


def _pass(loaded: Loaded, src: _Source, idx: list[int], device: torch.device, want_probs: bool,
          workers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(labels, fc7 features, probabilities) for ``src[idx]``, centre crop, in batches."""
    norm = loaded.preprocess.normalizer().to(device)
    crop = loaded.preprocess.crop
    path = compute_path(loaded.model, device)  # as `alexnet features` and `predict` run
    fc7 = feature_fn(loaded.model, crop, "fc7", path)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(src, idx), batch_size=BATCH, num_workers=default_workers(workers)
    )
    labels, feats, probs = [], [], []
    with torch.no_grad():
        for x, y, _ in loader:
            x = norm(x.to(device))
            feats.append(fc7(x).float().cpu())
            if want_probs:
                probs.append(
                    predict_probs(loaded.model, x, crop, "center", x.device, path.amp, path.channels_last).cpu()
                )
            labels.append(y)
    return torch.cat(labels), torch.cat(feats), (torch.cat(probs) if probs else torch.empty(0))


def make_figures(loaded: Loaded, run_dir: Path | None, data: str | None, out: Path, which: list[str],
                 device: torch.device, max_val: int = 2000, max_train: int = 5000, workers: int = 0) -> list[Path]:  # fmt: skip
    figure_files(out, which)  # refuses a name that is not a figure's
    if "curves" in which and run_dir is None:  # every precondition before the first file is written
        raise UserError("the curves figure needs a run directory (it reads metrics.jsonl)")
    sources = _sources(loaded, data) if set(which) - {"filters", "curves"} else None
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "filters" in which:
        written.append(filters_figure(loaded, out))
    if "curves" in which:
        written.append(curves_figure(run_dir, out))  # type: ignore[arg-type]
    if {"predictions", "neighbours", "confusion"} & set(which):
        train_src, val_src = sources  # type: ignore[misc]
        v_idx = seeded_sample(len(val_src), max_val).tolist()
        labels, v_feats, probs = _pass(loaded, val_src, v_idx, device, True, workers)

        def fetch(src: _Source, ids: list[int]) -> ImageSet:
            items = [src[i] for i in ids]
            return ImageSet(torch.stack([t[0] for t in items]), torch.tensor([t[1] for t in items]),
                            [src.names[i] for i in ids])  # fmt: skip

        if "predictions" in which:
            pick = torch.linspace(0, len(v_idx) - 1, min(8, len(v_idx))).round().long().unique().tolist()
            written.append(predictions_figure(loaded, probs[pick], fetch(val_src, [v_idx[i] for i in pick]), out))
        if "neighbours" in which:
            t_idx = seeded_sample(len(train_src), max_train).tolist()
            _, t_feats, _ = _pass(loaded, train_src, t_idx, device, False, workers)
            q = torch.linspace(0, len(v_idx) - 1, min(5, len(v_idx))).round().long().unique().tolist()
            nn_idx = nearest(v_feats[q], t_feats, min(6, len(t_idx)))
            needed = sorted({int(t) for row in nn_idx for t in row})
            train_set = fetch(train_src, [t_idx[t] for t in needed])
            remap = {t: k for k, t in enumerate(needed)}
            val_set = fetch(val_src, [v_idx[i] for i in q])
            bank = torch.zeros(len(needed), t_feats.shape[1])
            for t, k in remap.items():
                bank[k] = t_feats[t]
            written.append(neighbours_figure(loaded, val_set, v_feats[q], train_set, bank, out))
        if "confusion" in which:
            written.append(confusion_figure(loaded, probs, labels, out))
    if {"occlusion", "units"} & set(which):
        written += _look_inside(loaded, sources[1], out, which, device, max_val)  # type: ignore[index]
    return written


def _look_inside(loaded: Loaded, val_src: _Source, out: Path, which: list[str], device: torch.device,
                 max_val: int) -> list[Path]:  # fmt: skip
    """Occlusion maps of 4 validation images (true class), and the top-9 validation patches of 8 conv5 units."""
    v_idx = seeded_sample(len(val_src), max_val).tolist()
    norm, crop = loaded.preprocess.normalizer().to(device), loaded.preprocess.crop
    written = []
    if "occlusion" in which:
        pick = [val_src[i] for i in v_idx[:4]]
        off = (loaded.preprocess.resize - crop) // 2
        images = [img[:, off : off + crop, off : off + crop] for img, _, _ in pick]
        maps = [
            occlusion_map(loaded.model, norm(img[None].to(device))[0], label)
            for img, (_, label, _) in zip(images, pick)
        ]
        written.append(occlusion_figure(loaded, images, maps, out))
    if "units" in which:
        batch = torch.stack([val_src[i][0] for i in v_idx])
        units = torch.linspace(0, _conv5_width(loaded.model) - 1, 8).round().long().tolist()
        written.append(units_figure(top_patches(loaded.model, batch, norm, crop, units), out))
    return written


def _conv5_width(model: torch.nn.Module) -> int:
    return [m for m in model.get_submodule("features").children() if isinstance(m, torch.nn.Conv2d)][-1].out_channels


def occlusion_figure(loaded: Loaded, images: list[torch.Tensor], maps: list[OcclusionMap], out: Path) -> Path:
    """Zeiler & Fergus's Fig. 7: each image beside its true class's probability as a grey square slides over it."""
    fig, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 5.4), squeeze=False)
    for k, (img, m) in enumerate(zip(images, maps)):
        _show(axes[0][k], img)
        axes[0][k].set_title(_label(loaded, m.target), fontsize=8)
        axes[1][k].imshow(img.permute(1, 2, 0).numpy())
        axes[1][k].imshow(m.heat.numpy(), cmap="jet", alpha=0.55, vmin=0.0, vmax=max(m.base_prob, 1e-6))
        axes[1][k].set_title(f"p {m.base_prob:.2f} -> min {float(m.grid.min()):.2f}", fontsize=8)
        axes[1][k].axis("off")
    fig.suptitle("occlusion sensitivity: p(true class) with a grey square centred on each region (blue = low)")
    return _save(fig, out / "occlusion.png")


def units_figure(top: TopPatches, out: Path) -> Path:
    """The 9 validation patches that excite each chosen conv5 unit most (its receptive field in the crop)."""
    units, patches = top.units, top.patches
    k = max(len(p) for p in patches)
    fig, axes = plt.subplots(len(units), k, figsize=(1.1 * k, 1.15 * len(units)), squeeze=False)
    for r, (u, row) in enumerate(zip(units, patches)):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c].permute(1, 2, 0).numpy())
        axes[r][0].set_title(f"conv5 unit {u}", fontsize=7, loc="left")
    fig.suptitle("strongest validation patches per conv5 unit (receptive field of the maximum)", fontsize=9)
    return _save(fig, out / "units.png")
