"""Model names, their metadata, and the builder ``create_model``.

Metadata numbers are the published ones; tests check them against the live models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserValueError
from .alexnet import AlexNet
from .init import init_weights
from .layers import Network
from .owt import AlexNetOWT

# Krizhevsky et al. 2012, Table 2: one CNN on ILSVRC-2012 validation (the published metrics of "alexnet"), tested
# as §4.1 says: the softmax averaged over ten patches (the four corners, the centre, and their mirror images)
PAPER_ILSVRC2012 = {"top1_err": 0.407, "top5_err": 0.182}
# the same figures as accuracies, as `evaluate` and `report` print them, with the views they were measured on
PAPER_PUBLISHED: dict[str, Any] = {"top1": 1 - PAPER_ILSVRC2012["top1_err"], "top5": 1 - PAPER_ILSVRC2012["top5_err"],
                   "what": "paper, Table 2: 1 CNN, ILSVRC-2012 val, 10 patches", "tta": "10crop"}  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., Network]
    description: str
    input_size: int  # native crop
    min_input_size: int
    default_init: str
    params_1k: int | None = None  # parameters at 1000 classes
    macs_native: int | None = None  # multiply-adds per image at input_size
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # published results, as torchvision keeps _metrics


MODELS: dict[str, ModelInfo] = {
    "alexnet": ModelInfo(
        name="alexnet",
        builder=lambda **kw: AlexNet(norm="lrn", **kw),
        description="the 2012 paper's network: two towers, LRN, 227x227",
        input_size=227,
        min_input_size=AlexNet.min_input_size,
        default_init="paper",
        params_1k=60_965_224,
        macs_native=724_406_816,
        metrics=PAPER_ILSVRC2012,
    ),
    "alexnet_bn": ModelInfo(
        name="alexnet_bn",
        builder=lambda **kw: AlexNet(norm="bn", **kw),
        description="the paper's topology with BatchNorm after every conv instead of LRN",
        input_size=227,
        min_input_size=AlexNet.min_input_size,
        default_init="kaiming",
    ),
    "alexnet_owt": ModelInfo(
        name="alexnet_owt",
        builder=lambda **kw: AlexNetOWT(**kw),
        description="torchvision's 'one weird trick' AlexNet (same state_dict keys)",
        input_size=224,
        min_input_size=AlexNetOWT.min_input_size,
        default_init="default",
        params_1k=61_100_840,
        macs_native=714_188_480,
    ),
}


def list_models() -> list[str]:
    return list(MODELS)


def get_model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise UserValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    init: str | None = None,
    weights: str | None = None,
    seed: int | None = None,
    **options: Any,
) -> Network:
    """Build a model by name.

    ``init`` picks the initialisation scheme (default: the variant's own, see ``init.py``); ``seed`` seeds it.
    ``weights``: ``"torchvision"``, torchvision's IMAGENET1K_V1 (``alexnet_owt`` only); or this package's weights
    of this variant, with their architecture options: a ``.safetensors`` file (`alexnet export` or
    `import-weights`), a run directory or a checkpoint (its EMA weights when the run kept them), or
    ``"hf-hub:ORG/NAME[@REV]"``, a Hub repository (`alexnet export --format hub`; huggingface_hub's cache, so
    ``HF_HUB_OFFLINE=1`` works after one download). ``alexnet.weights.load_weights`` of the same gives their
    class names and preprocessing too.
    ``num_classes``: default 1000, or the weights' own; another count gets a freshly initialised last layer.
    ``options`` go to the architecture (``dropout``, and ``lrn_size/alpha/beta/k/groups`` for ``alexnet``).

    Training in your own loop on a Linux CPU: call ``alexnet.tuning.keep_freed_memory(torch.device("cpu"))``
    once before the first step, as ``alexnet train`` does, or start Python with the glibc variables
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. Without it glibc returns every freed block over
    32 MB to the system and the next step's activations of the same size are page-faulted in again; both
    torchvision's net and these gain from it (benchmarks/train_step.py measures both, with and without).
    """
    info = get_model_info(name)
    saved = None
    if weights is not None and weights != "torchvision":
        from .pretrained import saved_weights

        saved = saved_weights(name, weights)
        clash = sorted(k for k, v in options.items() if k in saved.options and saved.options[k] != v)
        if clash:
            raise UserValueError(f"{', '.join(clash)}: set by the weights {weights}")
        options = saved.options | options
        num_classes = len(saved.class_names) if num_classes is None else num_classes
    num_classes = 1000 if num_classes is None else num_classes
    if num_classes < 1:
        raise UserValueError(f"num_classes must be at least 1, got {num_classes}")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = info.builder(num_classes=num_classes, **options)
    except TypeError as e:
        raise UserValueError(f"bad option for {name}: {e}") from None
    init_weights(model, init or info.default_init)
    if saved is not None:
        from .pretrained import load_state

        load_state(model, saved.state, same_classes=num_classes == len(saved.class_names))
    elif weights is not None:
        from .pretrained import load_pretrained

        load_pretrained(model, name, weights)
    return model
