"""`alexnet evaluate`: top-1/top-5, loss and per-class accuracy of trained weights on a validation set,
with test-time augmentation; the paper's published numbers beside ours for ImageNet's classes."""

from __future__ import annotations

import json

from ..config import Config
from ..data.classes import display_name, is_imagenet
from ..data.loaders import build_eval_data, data_of
from ..engine.runlog import setup_logging
from ..errors import UserError
from ..inference import EvalResult, evaluate
from ..io.onnx_runtime import inference_path, load_for_inference, takes_uint8
from ..models import PAPER_PUBLISHED, get_model_info
from ..parallel import distributed


def run_evaluate(weights: str, data: str | None = None, split_dir: str | None = None, tta: str = "center",
                 batch_size: int | None = None, device: str = "auto", towers: str | None = None,
                 as_json: bool = False, amp: str = "auto", test_size: int | None = None) -> int:  # fmt: skip
    """Evaluate ``weights`` (a run, checkpoint, weights file, or an ONNX file this package exported) on ``data``'s
    val split (default: the run's own data)."""
    setup_logging(verbose=not as_json)
    dist = distributed.setup(device)  # under torchrun: each rank evaluates its shard, rank 0 prints the sums
    try:
        if data and split_dir:  # (one would be ignored)
            raise UserError("--split-dir is evaluated instead of DATA/val: give --data or --split-dir, not both")
        w = load_for_inference(weights, dist.device, towers)
        data_path = None if split_dir else data_of(data, w.config, weights)  # --split-dir: any weights, no dataset
        cfg = w.config or Config()
        batches = build_eval_data(data_path, w.preprocess, w.class_names,
                                  (batch_size or cfg.train.batch_size) // dist.world or 1, cfg.data.workers,
                                  split_dir, cfg.data.val_fraction, dist.rank, dist.world,
                                  pin_memory=dist.device.type == "cuda")  # fmt: skip
        path = inference_path(w.model, dist.device, amp, tta, test_size)
        minimum = get_model_info(w.variant).min_input_size
        if test_size is not None and test_size < minimum:
            raise UserError(f"--test-size {test_size} is below {w.variant}'s minimum input of {minimum} px")
        if test_size is not None and w.preprocess.normalizer().mean_image is not None:
            raise UserError(
                "--test-size works with channel-mean normalisation only (these weights subtract a mean image)"
            )
        norm = None if takes_uint8(w.model) else w.preprocess.normalizer()
        res = evaluate(w.model, batches, norm, w.preprocess.crop, len(w.class_names),
                       dist.device, tta, path.amp, path.channels_last, test_size)  # fmt: skip
        if res.n == 0:  # every file unreadable (each was named as it was skipped): no accuracy to report
            raise UserError(f"no image in {split_dir or data_path} could be read; nothing evaluated")
    finally:
        distributed.teardown()
    if dist.is_main:
        imagenet = is_imagenet(w.class_names)
        published = w.published or (PAPER_PUBLISHED if imagenet else None)
        print(
            to_json(res, w.class_names, published)
            if as_json
            else format_report(res, w.class_names, published, w.source)
        )
    return 0


# a published figure's test-time views (its "tta", one of TTA_CHOICES), as the report names them
VIEWS = {"center": "the centre crop", "flip": "the centre crop and its mirror image", "10crop": "10 patches"}


def format_report(res: EvalResult, class_names: list[str], published: dict | None, source: str) -> str:
    lines = [
        f"{source}: {res.n} images, tta={res.tta}",
        f"  top-1 accuracy {res.top1 * 100:6.2f} %   (error {100 - res.top1 * 100:6.2f} %)",
        f"  top-5 accuracy {res.top5 * 100:6.2f} %   (error {100 - res.top5 * 100:6.2f} %)",
        f"  loss           {res.loss:.4f}",
    ]
    if published:
        p = published
        lines.append(f"  published, {p['what']}: top-1 accuracy {p['top1'] * 100:.1f} % (error "
                     f"{100 - p['top1'] * 100:.1f} %), top-5 accuracy {p['top5'] * 100:.1f} % (error "
                     f"{100 - p['top5'] * 100:.1f} %)")  # fmt: skip
        if p.get("tta") in VIEWS and p["tta"] != res.tta:  # (files imported before the views were recorded: unknown)
            lines.append(f"  a different protocol: the published figures are from {VIEWS[p['tta']]}, this result from "
                         f"{VIEWS[res.tta]} (--tta {p['tta']} measures as they were measured)")  # fmt: skip
    shown = [(a, c) for c, a in zip(class_names, res.per_class) if a is not None]
    if shown and len(shown) <= 50:
        lines.append("  per-class top-1:")
        lines += [f"    {display_name(c):40s} {a * 100:6.2f} %" for a, c in shown]
    elif shown:
        lines.append("  10 worst classes:")
        lines += [f"    {display_name(c):40s} {a * 100:6.2f} %" for a, c in sorted(shown)[:10]]
    return "\n".join(lines)


def to_json(res: EvalResult, class_names: list[str], published: dict | None) -> str:
    d = res.as_dict(class_names)
    if published:
        d["published"] = published
    return json.dumps(d)
