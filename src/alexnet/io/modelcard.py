"""What a Hugging Face Hub repository of this package's weights holds (`alexnet export RUN --format hub --out DIR`):
``model.safetensors`` (what ``hf-hub:ORG/NAME`` loads), ``config.json`` (the export metadata, export_meta.py) and
a model card, ``README.md``, whose YAML block is the metadata the Hub reads (library, license, datasets, tags, and
the results in model-index form), with the results' source and the command that trained the network.
Uploading is the user's ``hf upload ORG/NAME DIR``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..config import load_recipe
from ..data.classes import is_imagenet
from ..engine.runlog import read_metrics, read_run_config
from ..errors import UserError
from ..models import get_model_info
from . import export_meta, hub
from .atomic import atomic_write_text
from .weights import Loaded, save_safetensors

# set by the run itself, not by its command: its own statistics file; the plan of a --budget run
_RUN_SET = {"data.path", "data.stats", "model.weights"}
_PLANNED = {"train.max_steps", "train.epochs", "schedule.warmup_epochs", "schedule.retargets"}


def read_results(path: Path) -> dict[str, Any]:
    """An `alexnet evaluate --json` file: its top-1/top-5 accuracies, image count and views."""
    try:
        d = json.loads(path.read_text())
        res = {"top1": float(d["top1"]), "top5": float(d["top5"]), "n": int(d["n"]), "tta": str(d["tta"])}
    except FileNotFoundError:
        raise UserError(f"--results {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--results {path}: not the output of `alexnet evaluate --json` ({e})") from None
    return res | {"from": f"`alexnet evaluate --json` ({res['n']} images, tta {res['tta']})"}


def run_results(run_dir: Path) -> dict[str, Any] | None:
    """The best validated epoch of a run's metrics.jsonl (the epoch of its best.pt), or None."""
    rows = [r for r in read_metrics(run_dir) if "val_top1" in r]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["val_top1"])
    return {"top1": best["val_top1"], "top5": best["val_top5"], "n": best.get("val_n"), "tta": None,
            "from": f"the run's metrics.jsonl (validation, best epoch {best['epoch']})"}  # fmt: skip


def train_command(cfg: dict[str, Any]) -> str:
    """`alexnet train` with the run's recipe and every value of its config.yaml that differs from the recipe."""
    recipe = str(cfg.get("recipe", "paper"))
    args = ["alexnet", "train", "--recipe", recipe]
    if cfg["data"].get("path"):
        args += ["--data", str(cfg["data"]["path"])]
    if cfg["model"].get("weights"):
        args += ["--weights", str(cfg["model"]["weights"])]
    budget = cfg["train"].get("budget")
    if budget:
        args += ["--budget", str(budget)]
    try:
        base = load_recipe(recipe).to_dict()
    except UserError:  # a recipe file that is gone: every value
        base = {}
    for section, values in cfg.items():
        for key, value in values.items() if isinstance(values, dict) else ():
            name = f"{section}.{key}"
            if name in _RUN_SET or (budget and name in _PLANNED) or name == "train.budget":
                continue
            recipe_value = base.get(section, {}).get(key, object())
            if recipe_value != value and recipe_value != "auto":  # "auto": what the run's machine resolved
                args += ["--set", f"{name}={_flow(value)}"]
    return " ".join(shlex.quote(a) for a in args)


def _flow(value: Any) -> str:
    """``value`` as --set reads it (YAML): 0.02, true, null, [0.5, 0.5, 0.5]."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _dataset(loaded: Loaded, cfg: dict[str, Any] | None) -> tuple[str, str] | None:
    """(name, type) of the training data as the Hub names datasets, when it is known."""
    if is_imagenet(loaded.class_names):
        return "ImageNet-1k (ILSVRC-2012)", "ILSVRC/imagenet-1k"
    if cfg is None:
        return None
    path = cfg["data"].get("path")
    return ("scikit-learn digits (built in)", "sklearn-digits") if not path else (Path(path).name, Path(path).name)


def front_matter(loaded: Loaded, name: str, license: str, results: dict | None, dataset: tuple | None) -> str:
    meta: dict[str, Any] = {"library_name": "alexnet", "license": license, "pipeline_tag": "image-classification",
                            "tags": list(dict.fromkeys(["image-classification", "alexnet", loaded.variant,
                                                        "safetensors"]))}  # fmt: skip
    if dataset:
        meta["datasets"] = [dataset[1]]
    if results and dataset:
        metrics = [{"type": "accuracy", "value": round(100 * results["top1"], 2), "name": "Top-1 accuracy (%)"},
                   {"type": "top_5_accuracy", "value": round(100 * results["top5"], 2), "name": "Top-5 accuracy (%)"}]  # fmt: skip
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": dataset[0], "type": dataset[1], "split": "validation"},
            "metrics": metrics, "source": {"name": results["from"]}}]}]  # fmt: skip
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def card(loaded: Loaded, name: str, license: str, results: dict | None, cfg: dict[str, Any] | None) -> str:
    """README.md: the Hub's metadata block, then how to use the weights, what they scored and how they were made."""
    pre, info = loaded.preprocess, get_model_info(loaded.variant)
    norm = ("a mean image (paper §2) subtracted" if pre.mean_image is not None
            else f"mean {list(pre.mean)} and std {list(pre.std)} per RGB channel")  # fmt: skip
    lines = [front_matter(loaded, name, license, results, _dataset(loaded, cfg)), f"# {name}", "",
             f"`{loaded.variant}`: {info.description}; {len(loaded.class_names)} classes. Weights for the `alexnet` "
             "package (safetensors: loading runs no code).", "", "## Use", "", "```bash",
             'pip install -e ".[hub]"   # in a clone of the alexnet package', "alexnet predict hf-hub:ORG/NAME image.jpg",
             "```", "", "(ORG/NAME: the repository this folder was uploaded to.) In Python, "
             '`alexnet.create_model("' + loaded.variant + '", weights="hf-hub:ORG/NAME")`.', "",
             f"Input: RGB, shorter side resized to {pre.resize} px, centre {pre.crop} x {pre.crop} crop, pixels "
             f"scaled to [0, 1], {norm}: `config.json` holds it (format `{export_meta.EXPORT_FORMAT}`).", ""]  # fmt: skip
    if results:
        lines += ["## Results", "", "| top-1 accuracy | top-5 accuracy | from |", "| --- | --- | --- |",
                  f"| {100 * results['top1']:.2f} % | {100 * results['top5']:.2f} % | {results['from']} |", ""]  # fmt: skip
    if loaded.published:
        p = loaded.published
        lines += [f"Published for these weights ({p['what']}): top-1 {100 * p['top1']:.1f} %, top-5 "
                  f"{100 * p['top5']:.1f} %.", ""]  # fmt: skip
    lines += ["## Training", ""]
    if cfg is None:
        lines += [f"Not trained by this package's run here: converted from {loaded.source}.", ""]
    else:
        lines += ["Trained with:", "", "```bash", train_command(cfg), "```", "", "<details><summary>config.yaml of "
                  "the run</summary>", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", "",
                  "</details>", ""]  # fmt: skip
    return "\n".join(lines)


def check_folder(out: Path, force: bool) -> None:
    """The precondition on the folder (before any work): never a non-empty one without ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; --format hub writes a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty; pass --force to replace its {hub.WEIGHTS_FILE}, "
                        f"{hub.CONFIG_FILE} and {hub.CARD_FILE}")  # fmt: skip
    if not out.parent.is_dir():
        raise UserError(f"output directory does not exist: {out.parent}")


def write_hub_folder(loaded: Loaded, out: Path, run_dir: Path | None, results: dict | None, license: str) -> str:
    """The folder (``check_folder`` first), file by file, each written atomically; returns what to say."""
    cfg = read_run_config(run_dir) if run_dir and (run_dir / "config.yaml").is_file() else None
    if results is None and run_dir is not None:
        results = run_results(run_dir)
    text = card(loaded, out.resolve().name, license, results, cfg)
    made = not out.exists()
    out.mkdir(exist_ok=True)
    doc = export_meta.document(loaded, input_name="x") | {"weights": hub.WEIGHTS_FILE}
    try:
        save_safetensors(loaded, out / hub.WEIGHTS_FILE)
        atomic_write_text(out / hub.CONFIG_FILE, json.dumps(doc, indent=1) + "\n")
        atomic_write_text(out / hub.CARD_FILE, text)
    except BaseException:  # (a disk that filled half-way): a folder this made goes, not one with some of the files
        if made:
            for name in (hub.WEIGHTS_FILE, hub.CONFIG_FILE, hub.CARD_FILE):
                (out / name).unlink(missing_ok=True)
            out.rmdir()
        raise
    scored = f"; card with {results['from']}" if results else "; card without results (give --results EVAL.json)"
    return (f"wrote {out}: {hub.WEIGHTS_FILE}, {hub.CONFIG_FILE}, {hub.CARD_FILE}{scored}. Upload it with "
            f"`hf upload ORG/NAME {out}` (huggingface_hub >= 1.0, whose `hf` command replaced `huggingface-cli`); "
            "then every command takes hf-hub:ORG/NAME as weights")  # fmt: skip
