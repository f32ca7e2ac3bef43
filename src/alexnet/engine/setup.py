"""Everything a run builds before its first step: the resolved config, data, model, optimizer, schedule,
the training state (fresh or from a checkpoint), and the compute path."""

from __future__ import annotations

import copy
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, save_yaml
from ..data.loaders import DataBundle, build_data, store_size
from ..data.preprocess import Preprocess
from ..data.transforms import BatchAugment
from ..errors import UserError
from ..io.weights import load_weights
from ..io.weights_file import model_options
from ..models import create_model, get_model_info
from ..parallel.distributed import DistInfo, global_batch_norm, new_group, pick_device
from ..parallel.hybrid import HybridAlexNet, grad_scaler
from . import tuning
from .ema import Ema
from .optim import Schedule, build_optimizer
from .rundir import check_run_dir, make_run_dir
from .runlog import RunLogger
from .state import EpochSums, RunInfo, TrainState

log = logging.getLogger("alexnet")


@dataclass
class Session:
    """What the steps of a run use besides its state: fixed once set up."""

    cfg: Config  # resolved: no "auto" left
    dist: DistInfo
    run_dir: Path
    data: DataBundle
    model: nn.Module  # what training steps call: compiled and/or DDP-wrapped
    eval_model: nn.Module  # compiled or raw, never DDP-wrapped
    augment: BatchAugment  # on the training device, writing the model's memory layout
    logger: RunLogger
    verbose: bool

    @property
    def main(self) -> bool:
        return self.dist.is_main

    @property
    def device(self) -> torch.device:
        return self.dist.device


def resolve_config(cfg: Config, device: torch.device, resuming: bool = False) -> Config:
    """The one place where a run's config is completed: ``auto`` compute settings for this device, an absolute
    data path (config.yaml is read again on resume, maybe from another directory), ``data.resize`` from a
    store's images, and ``data.crop`` from the model. Lower layers only read it."""
    cfg = copy.deepcopy(cfg)
    cfg.train = tuning.resolve(cfg.train, device)
    d, size = cfg.data, None
    if d.path is not None:
        d.path = str(Path(d.path).absolute())
        size = store_size(d.path)
        if size is not None and size != d.resize:
            log.info("%s holds %dx%d images: using data.resize=%d", d.path, size, size, size)
            d.resize = size
    if not resuming:  # a resumed run's config already holds them, and its checkpoint replaces the weights
        _starting_weights_options(cfg)
    d.crop = d.crop or get_model_info(cfg.model.name).input_size
    if d.crop > d.resize:
        raise UserError(f"data.crop {d.crop} is larger than the images ({d.resize}px); use a smaller crop"
                        + (" or prepare the store with a larger --size" if size else ""))  # fmt: skip
    check_amp(cfg.train.amp, device)
    return cfg


def check_amp(amp: str, device: torch.device) -> None:
    """fp16 (and its loss scaler) is for GPUs: on CPUs only AMX-FP16 Xeons compute it natively."""
    if amp == "fp16" and device.type == "cpu":
        raise UserError("train.amp=fp16 needs a GPU; use bf16 on the CPU")


def _starting_weights_options(cfg: Config) -> None:
    """``model.weights``: their variant must be the run's; their architecture options (LRN settings) and, unless
    set, their input normalisation (mean, std; torchvision's ImageNet figures for ``torchvision``) become the
    run's, written to config.yaml: the network is fed what it was trained on."""
    m = cfg.model
    if m.weights is None:
        return
    if m.weights == "torchvision":  # its variant is checked with the config (config.check)
        pre = Preprocess.imagenet()
    else:
        m.weights = str(Path(m.weights).absolute())
        src = load_weights(m.weights)
        if src.variant != m.name:
            raise UserError(f"{m.weights} holds {src.variant} weights; train it with --model {src.variant}")
        for key, value in src.options.items():
            setattr(m, key, value)
        pre = src.preprocess
    d = cfg.data
    if d.mean is None and d.std is None:
        mean = pre.mean if pre.mean_image is None else tuple(float(v) for v in pre.mean_image.mean((1, 2)))
        d.mean, d.std, d.normalize = [float(v) for v in mean], [float(v) for v in pre.std], "channel"


def _load_starting_weights(model: nn.Module, cfg: Config, class_names: list[str]) -> None:
    """Start from a weights file: every layer, except the last when the classes differ (fine-tuning)."""
    src = load_weights(str(cfg.model.weights))
    state = src.model.state_dict()
    if src.class_names != class_names:
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        state = {k: v for k, v in state.items() if not k.startswith(last + ".")}
        log.info("starting from %s; %s freshly initialised for %d classes", src.source, last, len(class_names))
    model.load_state_dict(state, strict=False)


def build_model(cfg: Config, class_names: list[str], dist: DistInfo, start: bool = True) -> nn.Module:
    """The raw model on its device(s): seeded by train.seed alone (not by what the data pipeline drew), the
    two-tower split when asked, channels_last when the compute path says so. ``start``: load ``model.weights``
    (not when resuming: the checkpoint replaces them, and the file need not exist any more)."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    file_weights = m.weights not in (None, "torchvision")
    model: nn.Module = create_model(m.name, len(class_names), init=m.init,
                                    weights=None if file_weights else m.weights,
                         **model_options(m.name, asdict(m)))  # fmt: skip
    if file_weights and start:
        _load_starting_weights(model, cfg, class_names)
    if m.freeze_features:
        for p in model.get_submodule("features").parameters():
            p.requires_grad_(False)
    if cfg.train.towers:
        model = _towers(model, cfg, dist)
        if m.freeze_features:  # the towers hold their own copies of the convolutions (and BatchNorms)
            for name, p in model.named_parameters():
                if name.split(".")[1].startswith(("conv", "bn")):
                    p.requires_grad_(False)
    else:
        model = model.to(dist.device)
    if dist.enabled and cfg.train.sync_bn:
        model = global_batch_norm(model)
    if hybrid(cfg, dist):
        model = HybridAlexNet(model, new_group())  # its own group: apart from DDP's buckets
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def hybrid(cfg: Config, dist: DistInfo) -> bool:
    """Whether this run shards fc6/fc7 (train.parallel=hybrid under torchrun; one process has nothing to split)."""
    return cfg.train.parallel == "hybrid" and dist.enabled


def tower_devices(cfg: Config, dist: DistInfo) -> tuple[torch.device, torch.device]:
    """The two devices of ``--towers``, checked (before the run directory is made). One process, two devices."""
    from ..models.towers import check_towers

    if dist.enabled:
        raise UserError("--towers runs in one process on two devices; it is not combined with torchrun/DDP")
    a, b = (pick_device(d) for d in check_towers(cfg.model.name, cfg.train.towers or ""))
    if a != dist.device:
        raise UserError(f"with --towers the training device is tower A's: use --device {a} or auto")
    return a, b


def _towers(model: nn.Module, cfg: Config, dist: DistInfo) -> nn.Module:
    """The paper's two-device split, from the CPU copy (no whole model on device A)."""
    from ..models.towers import TowerAlexNet

    return TowerAlexNet.from_grouped(model, tower_devices(cfg, dist))


def _seed_and_kernels(cfg: Config, device: torch.device) -> None:
    tuning.keep_freed_memory(device)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    if cfg.train.deterministic:
        # cuBLAS reduces in a fixed order only with this workspace setting, read when its handle is made (at
        # the first matmul, after this); CUDA docs, "Results reproducibility". A user's own value is kept.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # a warning names any op without such a kernel
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def new_state(cfg: Config, data: DataBundle, dist: DistInfo, resuming: bool = False) -> TrainState:
    t = cfg.train
    model = build_model(cfg, data.class_names, dist, start=not resuming)
    lr = cfg.optim.lr * (t.batch_size / cfg.optim.lr_scale_batch if cfg.optim.lr_scale_batch else 1.0)
    optimizer = build_optimizer(model, cfg.optim, lr, loss_scaled=t.amp == "fp16")
    assert data.train is not None
    schedule = Schedule(optimizer, cfg.schedule, lr, t.epochs, len(data.train), t.max_steps)
    scaler = (grad_scaler if hybrid(cfg, dist) else torch.amp.GradScaler)(dist.device.type, enabled=t.amp == "fp16")
    info = RunInfo(cfg, data.class_names, data.preprocess, dist.world, data.train_set)
    return TrainState(model, optimizer, schedule, scaler, info, ema=Ema(model) if t.ema else None)


def setup(cfg: Config, run_dir: Path, resume: dict[str, Any] | None, dist: DistInfo,
          verbose: bool = True) -> tuple[Session, TrainState]:  # fmt: skip
    """Resolve, check the run directory (before any data is scanned), build data and state, wrap the model."""
    cfg = resolve_config(cfg, dist.device, resuming=resume is not None)
    if cfg.train.towers:
        tower_devices(cfg, dist)
    if dist.is_main:
        check_run_dir(run_dir, resuming=resume is not None)
    if resume is not None and cfg.data.stats is None and (run_dir / "stats.npz").is_file():
        cfg.data.stats = str((run_dir / "stats.npz").absolute())  # the statistics this run started with
    _seed_and_kernels(cfg, dist.device)
    data = build_data(cfg, dist.rank, dist.world, pin_memory=dist.device.type == "cuda", device=dist.device)
    if dist.is_main:
        make_run_dir(run_dir, resuming=resume is not None)
        if data.skipped:
            log.warning("skipping %d unreadable files:\n  %s", len(data.skipped), "\n  ".join(data.skipped[:50]))
    if resume is not None and resume["class_names"] != data.class_names:
        raise UserError("the data's classes differ from the checkpoint's; resume with the same --data")
    state = new_state(cfg, data, dist, resuming=resume is not None)
    if resume is not None:
        state.load_state_dict(resume)
        if not dist.is_main:  # the checkpoint's partial sums are every rank's together: rank 0 carries them
            state.partial = EpochSums(seconds=state.partial.seconds)
        if resume.get("world_size", 1) != dist.world and dist.is_main:
            log.info("checkpoint written by %d process(es), continuing on %d: the same network (keyed dropout, "
                     "global BatchNorm; see Scaling)", resume.get("world_size", 1), dist.world)  # fmt: skip
        if dist.is_main and resume.get("train_set", data.train_set) != data.train_set:
            log.warning("the training images differ from the checkpoint's (%s; now %s): the run goes on, but it "
                        "is not the run an uninterrupted one would have made (each epoch's order is drawn over "
                        "the images there are now)", resume["train_set"], data.train_set)  # fmt: skip
        if dist.is_main:
            log.info("resuming at epoch %d, step %d (global step %d)", state.epoch + 1, state.step_in_epoch,
                     state.global_step)  # fmt: skip
    model, eval_model = _wrap(cfg, data, state, dist)
    augment = data.augment
    augment.normalizer = data.augment.normalizer.to(dist.device)
    if cfg.train.channels_last:  # the augmentation writes the model's layout directly
        augment.memory_format = torch.channels_last
    logger = RunLogger(run_dir if dist.is_main else None, state.global_step)
    if resume is not None:
        logger.keep_epochs(state.epoch)
    if dist.is_main:
        _announce(cfg, data, state, dist, run_dir)
    return Session(cfg, dist, run_dir, data, model, eval_model, augment, logger, verbose), state


def _wrap(cfg: Config, data: DataBundle, state: TrainState, dist: DistInfo) -> tuple[nn.Module, nn.Module]:
    """The compute path's last choice (compile, decided by this run's length) and the DDP wrapper."""
    t = cfg.train
    note = ""
    if t.compile is None:  # auto: only where its one-off cost is repaid within this run
        assert data.train is not None
        total = data.train.num_samples * t.epochs
        t.compile = tuning.compile_pays(dist.device, tuning.has_lrn(state.model), total, bool(t.towers))
        note = f" (auto, for {total:,} training images)"
    if dist.is_main:
        log.info("compute path: amp=%s channels_last=%s compile=%s%s sync_every=%d", t.amp, t.channels_last,
                 t.compile, note, t.sync_every)  # fmt: skip
    if dist.is_main and t.parallel == "hybrid" and not dist.enabled:
        log.info("parallel=hybrid: one process, nothing to shard; training the plain model")
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    compiled = (lambda m: _compiled(m, t.compile_backend)) if t.compile else (lambda m: m)  # noqa: E731
    if isinstance(state.model, HybridAlexNet):
        return compiled(state.model.ddp(ids)), _eval_copy(cfg, len(data.class_names), dist)
    eval_model = compiled(state.model)
    # compile(DDP(model)), as PyTorch documents it: dynamo's DDP optimizer splits the graph at DDP's gradient
    # buckets, so each bucket's all-reduce starts while the backward of the layers below it still runs
    return (compiled(DDP(state.model, device_ids=ids)) if dist.enabled else eval_model), eval_model


def _eval_copy(cfg: Config, num_classes: int, dist: DistInfo) -> nn.Module:
    """Hybrid runs validate on a plain model that the shards are assembled into (hybrid.assemble) before each
    validation: exactly the single-process evaluation, for 244 MB of fp32 gathered once per epoch."""
    m = cfg.model
    model = create_model(m.name, num_classes, init="default", **model_options(m.name, asdict(m))).to(dist.device)
    model = model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model
    return _compiled(model, cfg.train.compile_backend) if cfg.train.compile else model


def _compiled(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile`` of a module: a module (an OptimizedModule), though torch types it as any callable."""
    out = torch.compile(model, backend=backend)
    assert isinstance(out, nn.Module)
    return out


def _num_params(model: nn.Module) -> int:
    return model.num_params() if isinstance(model, HybridAlexNet) else sum(p.numel() for p in model.parameters())


def write_run_files(s: Session) -> None:
    """config.yaml and stats.npz, as this start trains on (rank 0; not by a resume with nothing left to train,
    whose smaller --epochs once rewrote config.yaml of a run that trained more)."""
    save_yaml(s.cfg, s.run_dir / "config.yaml")
    s.data.stats.save(s.run_dir / "stats.npz")


def _announce(cfg: Config, data: DataBundle, state: TrainState, dist: DistInfo, run_dir: Path) -> None:
    assert data.train is not None
    log.info("model %s (%s params), %d classes, %d train / %d val images, device %s, world %d", cfg.model.name,
             f"{_num_params(state.model):,}", len(data.class_names), data.train.num_samples,
             data.val.num_samples, dist.device, dist.world)  # fmt: skip
