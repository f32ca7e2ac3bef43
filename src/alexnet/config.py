"""Run configuration: dataclasses, YAML recipes, and ``key=value`` overrides.

A recipe is a YAML file of sections matching the dataclasses below (see ``recipes/``).
Every value is checked here, so a typo or an impossible value fails before any work
starts, with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "alexnet"
    init: str | None = None  # paper | kaiming | default; None: the variant's own
    dropout: float = 0.5
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    weights: str | None = None  # "torchvision": start from torchvision's IMAGENET1K_V1 (alexnet_owt)
    freeze_features: bool = False  # fine-tuning: train only the classifier


@dataclass
class DataConfig:
    path: str | None = None  # ImageFolder root (train/ and val/ inside); None: built-in digits
    resize: int = 256  # shorter side resized to this, then the centre square is kept (paper §2)
    crop: int | None = None  # training/test crop; None: the model's native size (227 or 224)
    train_aug: str = "paper"  # paper (random crop + flip) | modern (RandomResizedCrop + flip) | shift (crop only)
    min_scale: float = 0.08  # modern: RandomResizedCrop's smallest area fraction
    normalize: str = "channel"  # channel: (x - mean) / std | pixel: subtract the mean image (paper §2)
    mean: list[float] | None = None  # channel mean, [0,1] scale; None: from stats, else ImageNet's
    std: list[float] | None = None
    pca_noise: float = 0.1  # std of the alphas of PCA colour noise (paper §4.1); 0 turns it off
    stats: str | None = None  # file written by `alexnet pca-stats`; None: <path>/alexnet-stats.npz if present
    workers: int = -1  # data-loader processes; -1: one per core, at most 8
    val_fraction: float = 0.2  # built-in digits only: held-out share


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | paper_sgd (the paper's update rule, §5) | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    lr_scale_batch: int = 0  # >0: linear scaling rule, lr * batch_size / lr_scale_batch


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | step | cosine | onecycle | constant
    factor: float = 0.1  # plateau/step: multiply lr by this
    patience: int = 0  # plateau: epochs without val improvement tolerated before a drop
    max_drops: int = 3  # plateau: at most this many drops (paper §5: "three times")
    step_size: int = 30  # step: epochs between drops
    warmup_epochs: float = 0.0  # cosine/onecycle: linear warm-up
    min_lr: float = 0.0  # cosine: final lr


@dataclass
class TrainConfig:
    epochs: int = 90
    batch_size: int = 128  # global batch, split across DDP ranks
    amp: str = "auto"  # auto | none | bf16 | fp16; auto: bf16 where the device has it natively (tuning.py)
    channels_last: bool | None = None  # None/auto: on for CUDA and CPU
    compile: bool | None = None  # None/auto: torch.compile on CUDA only
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    deterministic: bool = False  # deterministic kernels (CPU runs are deterministic anyway)
    eval_tta: str = "center"  # center | flip | 10crop, used for the per-epoch val metrics
    checkpoint_every: int = 0  # also save every N optimizer steps (0: only at epoch ends)
    keep_last: int = 3  # step checkpoints kept besides last.pt / best.pt
    log_every: int = 20  # steps between plain log lines when not on a terminal
    strict_data: bool = False  # fail on unreadable training images instead of skipping them
    towers: str | None = None  # "DEV_A,DEV_B": the paper's two-device split (alexnet / alexnet_bn only)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.train_aug": ("paper", "modern", "shift"),
    "data.normalize": ("channel", "pixel"),
    "optim.name": ("sgd", "paper_sgd", "adamw"),
    "schedule.name": ("plateau", "step", "cosine", "onecycle", "constant"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "train.eval_tta": ("center", "flip", "10crop"),
    "model.init": ("paper", "kaiming", "default"),
}
POSITIVE = {"optim.lr", "train.epochs", "train.batch_size", "data.resize", "data.crop", "schedule.step_size",
            "train.keep_last"}  # fmt: skip
NON_NEGATIVE = {
    "optim.weight_decay",
    "optim.momentum",
    "optim.label_smoothing",
    "data.pca_noise",
    "schedule.patience",
    "schedule.max_drops",
    "schedule.warmup_epochs",
    "schedule.min_lr",
    "train.checkpoint_every",
    "train.keep_last",
}
UNIT_INTERVAL = {"model.dropout", "data.val_fraction", "data.min_scale", "schedule.factor", "optim.label_smoothing"}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        if bool in args and isinstance(value, str) and value.lower() == "auto":
            return None  # an optional switch: None means "decide for the device" (tuning.py)
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{key} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key} must be an integer, got {value!r}") from None
        if f != int(f):
            raise UserError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(cfg: Config) -> None:
    from .models import list_models

    if cfg.model.name not in list_models():
        raise UserError(f"model.name: unknown model {cfg.model.name!r}; choose one of {', '.join(list_models())}")
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v is not None and v not in allowed:
            raise UserError(f"{key}: {v!r} is not allowed; choose one of {', '.join(allowed)}")
    for key in POSITIVE | NON_NEGATIVE | UNIT_INTERVAL:
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v is None:
            continue
        if key in POSITIVE and v <= 0:
            raise UserError(f"{key} must be > 0, got {v}")
        if key in NON_NEGATIVE and v < 0:
            raise UserError(f"{key} must be >= 0, got {v}")
        if key in UNIT_INTERVAL and not 0 <= v <= 1:
            raise UserError(f"{key} must be between 0 and 1, got {v}")
    if cfg.train.towers is not None:
        if cfg.model.name not in ("alexnet", "alexnet_bn"):
            raise UserError(f"train.towers needs a two-tower model (alexnet or alexnet_bn), not {cfg.model.name}")
        if len(cfg.train.towers.split(",")) != 2:
            raise UserError(f"train.towers must name two devices like cuda:0,cuda:1, got {cfg.train.towers!r}")
    if cfg.data.crop is not None and cfg.data.crop > cfg.data.resize:
        raise UserError(f"data.crop ({cfg.data.crop}) cannot be larger than data.resize ({cfg.data.resize})")
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        if v is not None and len(v) != 3:
            raise UserError(f"data.{key} must have 3 values (R, G, B), got {v}")
    if cfg.data.std is not None and min(cfg.data.std) <= 0:
        raise UserError(f"data.std values must be > 0, got {cfg.data.std}")


def from_dict(d: dict[str, Any], where: str = "config") -> Config:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    cfg = Config()
    hints = _section_types(Config)
    for section, values in d.items():
        if section == "recipe":
            cfg.recipe = str(values)
            continue
        if section not in hints:
            allowed = ", ".join(f.name for f in dataclasses.fields(Config))
            raise UserError(f"{where}: unknown section {section!r}; allowed: {allowed}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{where}: section {section!r} must be a mapping")
        for k, v in values.items():
            set_value(cfg, f"{section}.{k}", v)
    _check(cfg)
    return cfg


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.name`` to ``value`` (a string from the command line or a YAML value)."""
    if "." not in key:
        raise UserError(f"override {key!r} must look like section.name=value (e.g. optim.lr=0.1)")
    section, name = key.split(".", 1)
    sections = {f.name for f in dataclasses.fields(Config)} - {"recipe"}
    if section not in sections:
        raise UserError(f"unknown config key {key!r}: no section {section!r}; sections: {', '.join(sorted(sections))}")
    obj = getattr(cfg, section)
    hints = _section_types(type(obj))
    if name not in hints:
        raise UserError(f"unknown config key {key!r}; {section} has: {', '.join(hints)}")
    if isinstance(value, str) and hints[name] not in (str, str | None):
        parsed = yaml.safe_load(value) if value.strip() else value
        value = parsed
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
        text, where = path.read_text(), str(path)
    else:
        if name_or_path not in list_recipes():
            raise UserError(
                f"unknown recipe {name_or_path!r}; choose one of {', '.join(list_recipes())} or a .yaml path"
            )
        text = (resources.files("alexnet") / "recipes" / f"{name_or_path}.yaml").read_text()
        where = f"recipe {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    data.setdefault("recipe", path.stem if path.is_file() else name_or_path)
    return from_dict(data, where)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value)
    _check(cfg)
    return cfg


def save_yaml(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
