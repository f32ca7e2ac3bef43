"""The ``alexnet`` command line: argument parsing only; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .engine.runlog import setup_logging
from .errors import crash_log_at, describe
from .options import add_amp, add_device, add_force, add_samples, add_tta, positive, quality, show_defaults, workers


def _summary(args: argparse.Namespace) -> int:
    from .commands.summary import print_summary

    return print_summary(args.model, args.input_size, args.num_classes, args.json)


def _add_summary(sub: argparse._SubParsersAction) -> None:
    from .models import list_models

    p = sub.add_parser("summary", help="print the layer table measured from the live model")
    p.add_argument("--model", default="alexnet", choices=list_models(), help="the network")
    p.add_argument("--input-size", type=positive, help="square input side (default: the model's native size)")
    p.add_argument("--num-classes", type=positive, default=1000, help="classes of the last layer (fc8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_summary)


# train's options that set a config key (their default: the recipe's value)
TRAIN_FLAGS = {"data": "data.path", "model": "model.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
               "lr": "optim.lr", "device": "train.device", "seed": "train.seed", "weights": "model.weights",
               "towers": "train.towers", "parallel": "train.parallel", "budget": "train.budget"}  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from .commands.train import run_train

    overrides = list(args.set or []) + [f"{key}={getattr(args, f)}" for f, key in TRAIN_FLAGS.items()
                                        if getattr(args, f) is not None]  # fmt: skip
    if args.strict:
        overrides.append("train.strict_data=true")
    if args.report_to is not None:  # HF Trainer's form: comma-separated names, or none
        names = [n.strip() for n in args.report_to.split(",") if n.strip() and n.strip() != "none"]
        overrides.append(f"train.report_to=[{','.join(names)}]")
    return run_train(args.data, args.recipe, args.out, args.resume, overrides)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .config import REPORT_TO, list_recipes
    from .models import list_models

    p = sub.add_parser(
        "train",
        help="train a network (built-in digits with no --data)",
        description="Train a network. With no arguments: the built-in digits dataset and the 'digits' recipe "
        "(2 min 36 s on a 2-core AVX2 CPU: docs/results.md). Under torchrun every process runs this same command; "
        "--batch-size is the GLOBAL batch, split evenly across processes.",
    )
    p.add_argument("--data", help="ImageFolder root with train/ and val/ (default: built-in digits)")
    p.add_argument(
        "--recipe",
        help=f"recipe name ({', '.join(list_recipes())}) or a YAML file "
        "(default: digits without --data, paper with it)",
    )
    p.add_argument("--model", choices=list_models(), help="the network")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<model>-<time>)")
    p.add_argument("--epochs", type=positive, help="epochs to train (a finished run given more trains on)")
    p.add_argument("--budget", metavar="DURATION", help="finish within this wall-clock time, e.g. 15m, 2h, 1h30m: "
                   "the run measures itself and plans its epochs, lr schedule and crops (printed)")  # fmt: skip
    p.add_argument("--batch-size", type=positive, help="global batch size (all processes together)")
    p.add_argument("--lr", type=float, help="learning rate: the first, or the peak after a warm-up")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue a run from its last checkpoint")
    p.add_argument("--seed", type=int, help="seeds the init, the data order, augmentation and dropout")
    p.add_argument("--weights", metavar="torchvision|FILE|hf-hub:ORG/NAME", help="start from pretrained weights: "
                   "torchvision (alexnet_owt), a .safetensors file / run (e.g. from import-weights), or a Hub repository "
                   "of them (hf-hub:ORG/NAME[@REV]); fc8 is re-initialised when the classes differ")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="fail on unreadable training images instead of skipping them")
    p.add_argument(
        "--towers", metavar="DEV_A,DEV_B", help="the paper's two-device split, e.g. cuda:0,cuda:1 (cpu,cpu to test)"
    )
    p.add_argument("--parallel", choices=["ddp", "hybrid"], help="under torchrun: ddp, or hybrid: convolutions "
                   "data-parallel, fc6/fc7 sharded over the processes")  # fmt: skip
    p.add_argument("--report-to", metavar="NAMES", help=f"experiment trackers, comma-separated: {', '.join(REPORT_TO)}, "
                   "or none; a resumed run keeps its own (and its tracker runs); default: the recipe's train.report_to")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe value, e.g. optim.lr=0.02")
    p.set_defaults(func=_train)


def _evaluate(args: argparse.Namespace) -> int:
    from .commands.evaluate import run_evaluate

    return run_evaluate(args.weights, args.data, args.split_dir, args.tta, args.batch_size, args.device, args.towers,
                        args.json, args.amp, args.test_size)  # fmt: skip


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a trained network on a validation set")
    p.add_argument("weights", metavar="WEIGHTS", help="run, checkpoint, .safetensors, hf-hub:ORG/NAME, or an "
                   ".onnx file this package exported (run in onnxruntime with the preprocessing it carries)")  # fmt: skip
    p.add_argument("--data", help="ImageFolder root whose val/ is evaluated (default: the run's own data)")
    p.add_argument("--split-dir", help="evaluate this class-folder directory instead of DATA/val")
    add_tta(p)
    p.add_argument("--batch-size", type=positive, help="images per forward pass; default: the run's "
                   "train.batch_size (128 for a weights file)")  # fmt: skip
    add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--towers", metavar="DEV_A,DEV_B", help="run the two towers on two devices (alexnet, alexnet_bn)")
    add_amp(p)
    p.add_argument("--test-size", type=positive, metavar="PX", help="network input side at test time, the same view as "
                   "the crop enlarged (e.g. 259 for a 227 crop): testing above the training resolution")  # fmt: skip
    p.set_defaults(func=_evaluate)


def _pca_stats(args: argparse.Namespace) -> int:
    from .data.pca import run_pca_stats

    setup_logging()
    return run_pca_stats(args.data, Path(args.out) if args.out else None, args.size, args.max_images, args.workers,
                         args.force)  # fmt: skip


def _add_pca_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pca-stats", help="RGB mean/std, PCA eigenvalues/vectors and mean image of a training set")
    p.add_argument("--data", required=True, help="ImageFolder root (its train/ is read)")
    p.add_argument("--out", help="output .npz (default: DATA/alexnet-stats.npz, which training picks up)")
    p.add_argument("--size", type=positive, default=256, help="images are resized to this square first")
    p.add_argument("--max-images", type=positive, default=20000, help="use a random sample of at most this many")
    p.add_argument("--workers", type=workers, default=-1, help="processes (-1: one per core)")
    add_force(p)
    p.set_defaults(func=_pca_stats)


def _predict(args: argparse.Namespace) -> int:
    from .commands.predict import predict

    setup_logging(verbose=False)
    return predict(args.weights, args.paths, args.topk, args.tta, args.batch_size, args.device, args.towers, args.json,
                   args.amp)  # fmt: skip


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes for image files, folders or globs")
    p.add_argument("weights", metavar="WEIGHTS", help="run directory, checkpoint .pt, exported .safetensors, "
                   "hf-hub:ORG/NAME, 'torchvision', or an .onnx file this package exported (run in onnxruntime)")  # fmt: skip
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, directories (recursive) or globs")
    p.add_argument("--topk", type=positive, default=5, help="classes listed per image")
    add_tta(p)
    p.add_argument("--batch-size", type=positive, default=32, help="images per forward pass")
    add_device(p)
    p.add_argument("--towers", metavar="DEV_A,DEV_B", help="run the two towers on two devices")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_amp(p)
    p.set_defaults(func=_predict)


def _features(args: argparse.Namespace) -> int:
    from .commands.predict import features

    setup_logging(verbose=False)
    return features(args.weights, args.paths, Path(args.out), args.layer, args.batch_size, args.device, args.amp,
                    args.force)  # fmt: skip


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="fc7 (or another layer's) vectors for image files, as .npz")
    p.add_argument("weights", metavar="WEIGHTS", help="run, checkpoint, .safetensors or hf-hub:ORG/NAME")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, directories (recursive) or globs")
    p.add_argument("--out", required=True, help="output .npz: arrays 'features' (N, D), 'files' (N,), 'layer'")
    p.add_argument("--layer", default="fc7", help="fc7 (4096-d), fc6, pool5, logits, or a module name")
    add_amp(p)
    p.add_argument("--batch-size", type=positive, default=32, help="images per forward pass")
    add_device(p)
    add_force(p)
    p.set_defaults(func=_features)


def _export(args: argparse.Namespace) -> int:
    from .commands.export import run_export

    setup_logging(verbose=False)
    return run_export(args.weights, args.format, Path(args.out), args.force, not args.no_lrn_op, args.with_preprocess,
                      Path(args.results) if args.results else None, args.license)  # fmt: skip


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write ONNX, a torch.export program (.pt2), safetensors, TorchScript or a Hugging Face Hub folder",
        description="ONNX and .pt2 files carry their preprocessing as metadata (format alexnet-export/1: the ONNX "
        "metadata entry 'alexnet', the .pt2 extra file alexnet.json): resize, crop, mean/std or the mean image, "
        "class names. The consumer's job, always: decode to RGB (not BGR), resize the shorter side to 'resize', keep "
        "the centre square, cut the centre 'crop' window; for the default float NCHW export also scale pixels to "
        "[0, 1] and normalise (x - mean) / std, or subtract the mean image's same window. --with-preprocess moves "
        "that scaling and normalisation into the graph.",
    )
    p.add_argument("weights", metavar="WEIGHTS", help="run, checkpoint, .safetensors or hf-hub:ORG/NAME")
    p.add_argument("--format", choices=["onnx", "pt2", "safetensors", "torchscript", "hub"], help="default: the one "
                   "--out's suffix names; torchscript is deprecated by PyTorch (use pt2), kept while PyTorch ships it; "
                   "hub: a folder holding model.safetensors, config.json and a model card README.md, to upload with "
                   "`hf upload ORG/NAME DIR`")  # fmt: skip
    p.add_argument("--out", required=True, help="the file to write (a folder for --format hub)")
    add_force(p)
    p.add_argument("--no-lrn-op", action="store_true", help="ONNX: write LRN as primitive operators, for runtimes "
                   "without ONNX's LRN (burn, candle, onnx2keras, ...)")  # fmt: skip
    p.add_argument("--with-preprocess", action="store_true", help="ONNX, pt2: the graph takes uint8 RGB crops "
                   "(N, crop, crop, 3) and scales and normalises them inside (mean/std or the mean image's centre "
                   "window); resizing and cropping stay the consumer's job")  # fmt: skip
    p.add_argument("--results", metavar="EVAL_JSON", help="hub: the model card's results from this `alexnet "
                   "evaluate --json` output (default: the run's best validated epoch in metrics.jsonl)")  # fmt: skip
    p.add_argument("--license", default="unknown", help="hub: the weights' license, as the Hub names licenses "
                   "(e.g. mit, apache-2.0, cc-by-nc-4.0)")  # fmt: skip
    p.set_defaults(func=_export)


def _import_weights(args: argparse.Namespace) -> int:
    from .commands.import_weights import run_import

    return run_import(args.file, args.out, args.mean, args.force)


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", help="bvlc_alexnet (.caffemodel, .onnx) or torchvision's AlexNet (.pth)")
    p.add_argument("file", metavar="FILE", help="bvlc_alexnet.caffemodel, bvlcalexnet-*.onnx or checkpoint.pth.tar")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--mean", metavar="BINARYPROTO", help="subtract Caffe's mean image (ilsvrc_2012_mean.binaryproto) "
                   "instead of the per-channel mean (104, 117, 123)")  # fmt: skip
    add_force(p)
    p.set_defaults(func=_import_weights)


def _explain(args: argparse.Namespace) -> int:
    from .commands.explain import run_explain

    return run_explain(
        args.weights, args.image, args.out, args.target, args.patch, args.stride, args.device, args.force
    )


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="occlusion map of one image: which parts the class depends on (PNG)")
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="run, checkpoint, .safetensors or hf-hub:ORG/NAME")
    p.add_argument("image", metavar="IMAGE", help="one image file")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--target", help="class index or name (default: the top class)")
    p.add_argument("--patch", type=positive, help="grey square side in pixels (default: crop / 5)")
    p.add_argument("--stride", type=positive, help="step between squares (default: about 28 x 28 positions)")
    add_device(p)
    add_force(p)
    p.set_defaults(func=_explain)


def _prepare_val(args: argparse.Namespace) -> int:
    from .data.valprep import prepare_val

    setup_logging(verbose=False)
    return prepare_val(args.val, args.labels, args.out, args.synsets, args.mode)


def _add_prepare_val(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-val", help="sort ImageNet's flat val/ into class folders from its label file")
    p.add_argument("val", metavar="VAL_DIR", help="the flat folder of ILSVRC2012_val_*.JPEG")
    p.add_argument("--labels", required=True, help="LOC_val_solution.csv (Kaggle) or "
                   "ILSVRC2012_validation_ground_truth.txt (devkit, with --synsets)")  # fmt: skip
    p.add_argument("--synsets", help="the devkit's meta.mat, or a text file of the wnids in ILSVRC2012_ID order")
    p.add_argument("--out", help="output folder (default: VAL_DIR itself, files moved into class folders)")
    p.add_argument("--mode", choices=["link", "move", "copy"], help="how images are placed; default: move in place, "
                   "hard-link elsewhere")  # fmt: skip
    p.set_defaults(func=_prepare_val)


def _figures(args: argparse.Namespace) -> int:
    from .commands.figures import run_figures

    return run_figures(args.weights, Path(args.out), args.which, args.data, args.device, args.max_val, args.max_train,
                       args.workers, args.force)  # fmt: skip


def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="the paper's figures for your network, curves and confusion (PNG)")
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="run, checkpoint, .safetensors or hf-hub:ORG/NAME")
    p.add_argument("--data", help="ImageFolder root (default: the run's own data)")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    p.add_argument(
        "--which", help="comma-separated (default: filters,predictions,neighbours,confusion, and curves of a run)"
    )
    add_samples(p)
    p.add_argument("--workers", type=workers, default=0, help="data-loader processes (0: in this one)")
    add_device(p)
    add_force(p, "figures already in --out")
    p.set_defaults(func=_figures)


def _report(args: argparse.Namespace) -> int:
    from .commands.report import run_report

    return run_report(Path(args.run), args.data, not args.no_data_figures, args.max_val, args.max_train, args.device)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report.md + report.html for a run, figures embedded")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", help="ImageFolder root (default: the run's own data)")
    p.add_argument("--no-data-figures", action="store_true", help="only curves and filters (no data needed)")
    add_samples(p)
    add_device(p)
    p.set_defaults(func=_report)


def _prepare(args: argparse.Namespace) -> int:
    from .data.store import run_prepare

    setup_logging()
    return run_prepare(args.data, args.out, args.size, args.format, args.quality, args.workers)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode and resize an ImageFolder once into a fast uint8 store")
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--out", required=True, help="store directory (then use --data STORE anywhere)")
    p.add_argument("--size", type=positive, default=256, help="images resized (shorter side) and centre-cropped to "
                   "this square")  # fmt: skip
    p.add_argument("--format", choices=["raw", "jpeg"], default="raw", help="raw uint8 (fastest) or JPEG (smaller)")
    p.add_argument("--quality", type=quality, default=90, help="JPEG quality for --format jpeg")
    p.add_argument("--workers", type=workers, default=-1, help="processes (-1: one per core)")
    p.set_defaults(func=_prepare)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train, _add_evaluate, _add_predict, _add_features, _add_export, _add_import_weights, _add_explain,
    _add_prepare_val, _add_figures, _add_report, _add_prepare, _add_pca_stats, _add_summary]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None,
                         ) -> tuple[Any, list[str]]:  # fmt: skip
        """No argument is left over: one that is, is said by the parser it was given to, so a subcommand's
        mistake points to that subcommand's --help (argparse hands a subcommand's leftovers up to the top)."""
        known, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return known, extra


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky et al. 2012): train, evaluate, predict, export.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    for name, p in sub.choices.items():
        show_defaults(p, TRAIN_FLAGS if name == "train" else {})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a bare `alexnet`: what it can do, as pip and git say it
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a mistake in the arguments (said in one line), --help or --version
        return e.code if isinstance(e.code, int) else 2
    crash_log_at(None)  # until a command names its own (train: the run's crash.log)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) is met here, not by the interpreter's last flush
        return code
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is one line (errors.describe)
        said = describe(e, argv)
        if said is None:  # ALEXNET_DEBUG=1: the traceback of an unexpected failure
            raise
        if said[0]:
            print(f"alexnet {args.command}: {said[0]}", file=sys.stderr)
        return said[1]
