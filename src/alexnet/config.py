"""Run configuration: dataclasses, YAML recipes, and ``key=value`` overrides.

A recipe is a YAML file of sections matching the dataclasses below (see ``recipes/``). Each field carries
its own rule (``choice``, ``positive``, ...) right where it is declared; every value is checked here, so a
typo or an impossible value fails before any work starts, with one line naming the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .data.resolution import ladder_below
from .errors import UserError
from .io.atomic import atomic_write_text
from .io.yaml_text import parse_yaml
from .models.lrn import PAPER_LRN


def _rule(default: Any, **rule: Any) -> Any:
    return field(default=default, metadata={"rule": rule})


# the names a recipe and the command line both take (one home: cli.py reads them from here)
AMP_CHOICES = ("auto", "none", "bf16", "fp16")  # auto: what the device runs natively (tuning.py)
TTA_CHOICES = ("center", "flip", "10crop")  # test-time views (data/transforms.py TTA)
REPORT_TO = ("tensorboard", "mlflow", "wandb")  # train.report_to's experiment trackers (trackers/; []: none)


def choice(default: Any, *allowed: Any) -> Any:
    return _rule(default, choices=allowed)


positive = functools.partial(_rule, gt=0)
non_negative = functools.partial(_rule, ge=0)
fraction = functools.partial(_rule, ge=0, le=1)  # a value in [0, 1]


@dataclass
class ModelConfig:
    name: str = "alexnet"  # the network: alexnet (the paper's), alexnet_bn or alexnet_owt (torchvision's)
    init: str | None = choice(None, "paper", "kaiming", "default")  # paper: N(0, 0.01) (§5); None: the variant's own
    dropout: float = fraction(0.5)  # dropout probability in fc6 and fc7 (paper §4.2: 0.5)
    lrn_size: int = positive(PAPER_LRN.size)  # LRN: n, the maps in each window (paper §3.3)
    lrn_alpha: float = non_negative(PAPER_LRN.alpha)  # LRN: alpha, divided by n as cuda-convnet and PyTorch do
    lrn_beta: float = non_negative(PAPER_LRN.beta)  # LRN: the exponent beta
    lrn_k: float = non_negative(PAPER_LRN.k)  # LRN: k; must be > 0 unless lrn_beta is 0
    lrn_groups: int = choice(2, 2, 1)  # 2: each tower normalises its own maps (paper); 1: all maps (Caffe's import)
    weights: str | None = None  # start from: torchvision (alexnet_owt), a .safetensors file or run, hf-hub:ORG/NAME
    freeze_features: bool = False  # fine-tuning: train only the classifier


@dataclass
class DataConfig:
    path: str | None = None  # ImageFolder root (train/ and val/ inside) or a prepared store; None: built-in digits
    resize: int = positive(256)  # shorter side resized to this, then the centre square is kept (paper §2)
    crop: int | None = positive(None)  # training/test crop; None: the model's native size (227 or 224)
    # paper: random crops + flips (§4.1); modern: RandomResizedCrop + flips; shift: random crops only
    train_aug: str = choice("paper", "paper", "modern", "shift")
    min_scale: float = fraction(0.08)  # modern: RandomResizedCrop's smallest area fraction
    # progressive resizing (data/resolution.py): training crops from res_start up to crop, in the network's steps
    # of 32 px, rising linearly between these fractions of the run; evaluation always at crop. None: off
    res_start: int | None = positive(None)
    res_ramp: list[float] = field(default_factory=lambda: [0.35, 0.85])  # the ramp: [start, end] fractions of the run
    # the last training crop (crop less a multiple of 32, else the next one down; None or above crop: crop).
    # Below crop, evaluation at crop tests above the training size (FFCV trains ResNet-50 up to 192 px and
    # validates at 256; Touvron et al. 2019)
    res_end: int | None = positive(None)
    normalize: str = choice("channel", "channel", "pixel")  # pixel: subtract the mean image (paper §2)
    mean: list[float] | None = None  # channel mean, [0,1] scale; None: from stats, else ImageNet's
    std: list[float] | None = None  # channel std, [0,1] scale; None: from stats, else ImageNet's
    pca_noise: float = non_negative(0.1)  # std of the alphas of PCA colour noise (paper §4.1); 0 turns it off
    stats: str | None = None  # file written by `alexnet pca-stats`; None: <path>/alexnet-stats.npz if present
    workers: int = _rule(-1, ge=-1)  # data-loader processes; -1: one per core, at most 8
    check_files: bool = False  # read every image's header before training (else bad files are skipped when decoded)
    # gpu: a JPEG store's batches are decoded on the training GPU (nvJPEG through TorchCodec), not by the CPU;
    # untested on a GPU (docs/data.md)
    jpeg_decode: str = choice("cpu", "cpu", "gpu")
    val_fraction: float = fraction(0.2)  # built-in digits only: held-out share

    @property
    def train_end(self) -> int:
        """The largest training crop: ``crop``, or the size of its ladder (crop less multiples of 32) at or
        just below ``res_end`` (of a resolved config)."""
        assert self.crop is not None, "resolve the config first"
        return ladder_below(self.crop, self.res_end)


@dataclass
class OptimConfig:
    name: str = choice("sgd", "sgd", "paper_sgd", "adamw")  # paper_sgd: the update rule as the paper prints it (§5)
    lr: float = positive(0.01)  # learning rate: the first, or the peak after a warm-up
    momentum: float = non_negative(0.9)  # momentum of sgd and paper_sgd (adamw has none)
    weight_decay: float = non_negative(5e-4)  # weight decay (paper §5: 0.0005; adamw's is decoupled)
    nesterov: bool = False  # Nesterov momentum (sgd only)
    label_smoothing: float = fraction(0.0)  # the cross-entropy's label smoothing (Szegedy et al. 2016)
    lr_scale_batch: int = non_negative(0)  # >0: linear scaling rule, lr * batch_size / lr_scale_batch


@dataclass
class ScheduleConfig:
    name: str = choice("plateau", "plateau", "step", "cosine", "onecycle", "constant")  # how the lr changes
    factor: float = fraction(0.1)  # plateau/step: multiply lr by this
    patience: int = non_negative(0)  # plateau: epochs without val improvement tolerated before a drop
    max_drops: int = non_negative(3)  # plateau: at most this many drops (paper §5: "three times")
    step_size: int = positive(30)  # step: epochs between drops
    warmup_epochs: float = non_negative(0.0)  # cosine/onecycle: epochs of linear warm-up
    min_lr: float = non_negative(0.0)  # cosine: final lr
    # set by --budget's checks (engine/budget.py): [[step, total], ...], from each step on the per-step schedule
    # ends at its total (the first entry is [0, the first plan's total]); the lr goes on from where it was
    retargets: list[list[int]] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = positive(90)  # passes over the training set (paper §5: roughly 90)
    budget: str | None = None  # wall-clock budget, e.g. 15m, 2h, 1h30m: plans epochs, lr and sizes (engine/budget.py)
    max_steps: int | None = positive(None)  # end after this many optimizer steps (last epoch partial); set by --budget
    batch_size: int = positive(128)  # global batch, split across DDP ranks
    amp: str = choice("auto", *AMP_CHOICES)  # auto: what the device runs natively (tuning.py)
    channels_last: bool | None = None  # None/auto: on for CUDA and CPUs, off on MPS
    compile: bool | None = None  # None/auto: torch.compile on CUDA, for runs long enough to repay it
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: the graphs without code generation)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = _rule(0, ge=0, le=2**32 - 1)  # seeds init, data order, augmentation and dropout; numpy's range
    deterministic: bool = False  # deterministic CUDA kernels and cuBLAS order (docs/platforms.md); CPU ones are anyway
    eval_tta: str = choice("center", *TTA_CHOICES)  # test-time views of the validations during training
    final_tta: str | None = choice(None, *TTA_CHOICES)  # the last validation's views (None: eval_tta)
    # an EMA of the weights, validated and saved in their place: its half-life as a fraction of the run's
    # optimizer steps (engine/ema.py); 0: off
    ema: float = fraction(0.0)
    # BatchNorm statistics recomputed before the last validation over this many training images in the
    # validation's view, with the final weights (engine/precise_bn.py); 0: off
    bn_recalibrate: int = non_negative(0)
    eval_every: int = non_negative(1)  # validate after every N epochs and always after the last (0: the last only)
    checkpoint_every: int = non_negative(0)  # also save every N optimizer steps (0: only at epoch ends)
    keep_last: int = positive(3)  # step checkpoints kept besides last.pt / best.pt
    log_every: int = non_negative(20)  # steps between plain log lines (when not on a terminal) and step scalars
    # steps between host reads of device values (NaN and stop checks, progress bar, log lines; checkpoint steps and
    # an epoch's last step always read): each read waits for the GPU. None/auto: 1 on CPUs, log_every (or 50) on GPUs
    sync_every: int | None = positive(None)
    strict_data: bool = False  # fail on unreadable training images instead of skipping them
    towers: str | None = None  # "DEV_A,DEV_B": the paper's two-device split (alexnet / alexnet_bn only)
    sync_bn: bool = True  # under DDP, BatchNorm statistics over the global batch: the same network on 1 or N ranks
    # under torchrun: ddp (everything replicated) or hybrid (convolutions DDP, fc6/fc7 sharded; hybrid.py)
    parallel: str = choice("ddp", "ddp", "hybrid")
    # experiment trackers fed from metrics.jsonl (trackers/); []: none
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={"rule": {"choices": REPORT_TO}})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = "custom"  # the recipe's name (a file's stem), kept in config.yaml

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("model", "data", "optim", "schedule", "train")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise UserError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        if bool in args and isinstance(value, str) and value.lower() == "auto":
            return None  # an optional switch: None means "decide for the device" (tuning.py)
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is list:  # (a string was read as YAML by set_value)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if tp is bool:
        words = dict.fromkeys(("true", "yes", "1", "on"), True) | dict.fromkeys(("false", "no", "0", "off"), False)
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in words):
            return words[value.lower()] if isinstance(value, str) else value
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        kind = "an integer" if tp is int else "a number"
        try:
            f = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            f = None
        if f is not None and not math.isfinite(f):  # (.inf as an integer once raised OverflowError)
            raise UserError(f"{key} must be a finite number, got {value!r}")
        if f is None or (tp is int and f != int(f)):
            raise UserError(f"{key} must be {kind}, got {value!r}")
        return int(f) if tp is int else f
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _check_field(key: str, value: Any, rule: dict[str, Any]) -> None:
    if value is None:
        return
    if "choices" in rule and not set(value if isinstance(value, list) else [value]) <= set(rule["choices"]):
        raise UserError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, rule['choices']))}")
    if "gt" in rule and not value > rule["gt"]:
        raise UserError(f"{key} must be > {rule['gt']}, got {value}")
    if "le" in rule and not rule["ge"] <= value <= rule["le"]:
        raise UserError(f"{key} must be between {rule['ge']} and {rule['le']}, got {value}")
    if "ge" in rule and not value >= rule["ge"]:
        raise UserError(f"{key} must be >= {rule['ge']}, got {value}")


def check(cfg: Config) -> None:
    """Every field's own rule, then the rules that relate fields to each other or to the model."""
    from .models import get_model_info, list_models
    from .models.pretrained import PRETRAINED
    from .models.towers import check_towers

    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            _check_field(f"{section}.{f.name}", getattr(obj, f.name), f.metadata.get("rule", {}))
    if cfg.model.name not in list_models():
        raise UserError(f"model.name: unknown model {cfg.model.name!r}; choose one of {', '.join(list_models())}")
    if cfg.train.towers is not None:
        check_towers(cfg.model.name, cfg.train.towers, "train.towers")
        if cfg.train.parallel == "hybrid":
            raise UserError("train.towers and train.parallel=hybrid are two different splits; choose one")
    if (m := cfg.model).lrn_k <= 0 and m.lrn_beta != 0:  # LRN divides by (k + alpha/n * sum a^2)^beta
        raise UserError(f"model.lrn_k must be > 0 when model.lrn_beta is not 0, got lrn_k={m.lrn_k:g} with lrn_beta="
                        f"{m.lrn_beta:g}: an all-zero window (common after ReLU) would give NaN")  # fmt: skip
    if cfg.train.ema and cfg.train.parallel == "hybrid":
        raise UserError("train.ema is not available with train.parallel=hybrid (the head is sharded); use ddp")
    d = cfg.data
    if cfg.schedule.name == "plateau" and cfg.train.eval_every != 1:
        raise UserError("schedule.name=plateau drops the lr on validation results: it needs train.eval_every=1")
    if cfg.train.budget is not None:
        parse_duration(cfg.train.budget, "train.budget")
    r = cfg.schedule.retargets
    if r and (any(len(x) != 2 or x[1] < 1 for x in r) or r[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(r, r[1:]))):
        raise UserError(f"schedule.retargets must be [[0, total], [step, total], ...] with rising steps, got {r}")
    if len(d.res_ramp) != 2 or not 0 <= d.res_ramp[0] <= d.res_ramp[1] <= 1:
        raise UserError(f"data.res_ramp must be two fractions [start, end] with 0 <= start <= end <= 1, got "
                        f"{d.res_ramp}")  # fmt: skip
    if d.crop is not None and d.crop > d.resize:
        raise UserError(f"data.crop ({d.crop}) cannot be larger than data.resize ({d.resize})")
    if cfg.model.weights == "torchvision" and (cfg.model.name, "torchvision") not in PRETRAINED:
        raise UserError(f"model.weights=torchvision: torchvision's weights are for {', '.join(m for m, _ in PRETRAINED)}"
                        f", not {cfg.model.name}; add --model alexnet_owt")  # fmt: skip
    info = get_model_info(cfg.model.name)
    minimum = info.min_input_size
    for key, v in (("crop", d.crop), ("res_start", d.res_start)):
        if (v or minimum) < minimum:
            raise UserError(f"data.{key} {v} is below {cfg.model.name}'s minimum input of {minimum}x{minimum} pixels")
    crop = d.crop or info.input_size
    end = ladder_below(crop, d.res_end)
    floor, what = max((minimum, f"{cfg.model.name}'s minimum input"), (d.res_start or 0, "data.res_start"))
    if end < crop and end < floor:  # (at crop the ramp ends where it always did)
        raise UserError(f"data.res_end {d.res_end} ends the training crops at {end} px (data.crop {crop} less "
                        f"multiples of 32), below {what} ({floor} px)")  # fmt: skip
    if bad := next((k for k in ("mean", "std") if getattr(d, k) is not None and len(getattr(d, k)) != 3), None):
        raise UserError(f"data.{bad} must have 3 values (R, G, B), got {getattr(d, bad)}")
    if d.std is not None and min(d.std) <= 0:
        raise UserError(f"data.std values must be > 0, got {d.std}")


_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, key: str = "--budget") -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``1h30m`` or ``1.5h``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text.strip().lower())
    if not parts or re.sub(r"\d+(?:\.\d+)?\s*[hms]", "", text.strip().lower()).strip():
        raise UserError(f"{key}: {text!r} is not a duration; use e.g. 90s, 15m, 2h or 1h30m")
    seconds = sum(float(v) * _UNITS[u] for v, u in parts)
    if seconds <= 0:
        raise UserError(f"{key}: {text!r} must be longer than zero")
    return seconds


def from_dict(d: dict[str, Any], where: str = "config") -> Config:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    cfg = Config()
    for section, values in d.items():
        if section == "recipe":
            cfg.recipe = str(values)
        elif section not in SECTIONS:
            raise UserError(f"{where}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}, recipe")
        elif not isinstance(values, dict | None):
            raise UserError(f"{where}: section {section!r} must be a mapping")
        else:
            for k, v in (values or {}).items():
                set_value(cfg, f"{section}.{k}", v)
    check(cfg)
    return cfg


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` to ``value`` (a string from the command line or a YAML value)."""
    if "." not in key:
        raise UserError(f"override {key!r} must look like section.name=value (e.g. optim.lr=0.1)")
    section, name = key.split(".", 1)
    if section not in SECTIONS:
        raise UserError(f"unknown config key {key!r}: no section {section!r}; sections: {', '.join(sorted(SECTIONS))}")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        raise UserError(f"unknown config key {key!r}; {section} has: {', '.join(hints)}")
    if isinstance(value, str) and hints[name] not in (str, str | None) and value.strip():
        with contextlib.suppress(yaml.YAMLError):  # not YAML (optim.lr=[): the type's check names the text
            value = yaml.safe_load(value)
    setattr(obj, name, _coerce(key, value, hints[name]))


def list_recipes() -> list[str]:
    files = resources.files("alexnet") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> Config:
    """A shipped recipe by name (``paper``, ``fast``, ...) or a YAML file path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"recipe file not found: {name_or_path}")
        text, where = path.read_text(encoding="utf-8", errors="replace"), str(path)  # not text: not valid YAML
    else:
        if name_or_path not in list_recipes():
            raise UserError(
                f"unknown recipe {name_or_path!r}; choose one of {', '.join(list_recipes())} or a .yaml path"
            )
        text = (resources.files("alexnet") / "recipes" / f"{name_or_path}.yaml").read_text()
        where = f"recipe {name_or_path}"
    data = parse_yaml(text, where)
    if data is None:
        raise UserError(f"{where}: empty (a recipe is a YAML mapping of sections, e.g. `optim: {{lr: 0.01}}`)")
    if isinstance(data, dict):  # (anything else from_dict refuses with one line)
        data.setdefault("recipe", path.stem if path.is_file() else name_or_path)
    return from_dict(data, where)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value)
    check(cfg)
    return cfg


# what a resumed run keeps from its checkpoint: the network it holds (and how it was made), the layers it trains
FIXED_ON_RESUME = ("model.name", "model.init", "model.weights", "model.lrn_size", "model.lrn_alpha", "model.lrn_beta",
                   "model.lrn_k", "model.lrn_groups", "model.freeze_features")  # fmt: skip


def resume_overrides(saved: Config, overrides: list[str], recipe: str | None = None) -> Config:
    """The checkpoint's config with ``overrides`` (a longer run, another lr or device...). Changing what the
    checkpoint's network is, or another ``--recipe``, is refused: it could not take effect (the weights come
    from the checkpoint) or would break the resume. Repeating the run's own values is fine (requeue scripts)."""
    if recipe is not None and recipe != saved.recipe and load_recipe(recipe).recipe != saved.recipe:
        raise UserError(f"--recipe {recipe}: a resumed run keeps its recipe ({saved.recipe}); change values with --set")
    cfg = apply_overrides(copy.deepcopy(saved), overrides)
    budgets = {parse_duration(b) if b else None for b in (cfg.train.budget, saved.train.budget)}
    if len(budgets) > 1:  # the plan is the checkpoint's: another --budget would only be a label in config.yaml
        raise UserError(f"--budget {cfg.train.budget}: a resumed run keeps the plan it was started with ("
                        f"{saved.train.budget or 'no --budget'}); for another, start a new run (--weights RUN)")  # fmt: skip
    for key in FIXED_ON_RESUME:
        section, name = key.split(".")
        old, new = getattr(getattr(saved, section), name), getattr(getattr(cfg, section), name)
        if key == "model.weights" and new not in (None, "torchvision"):
            new = str(Path(new).absolute())  # config.yaml holds it absolute
        if new != old:
            raise UserError(
                f"{key}={new}: a resumed run keeps the network its checkpoint holds ({key}={old}); "
                "for other settings start a new run from its weights: alexnet train --weights RUN ..."
            )
    return cfg


def save_yaml(cfg: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
