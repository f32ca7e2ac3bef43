"""Pretrained weights: torchvision's IMAGENET1K_V1 for ``alexnet_owt``, and this package's own for every variant
(files, runs, and the Hugging Face Hub's ``hf-hub:ORG/NAME``: ``io.weights_file.read_weights``).

torchvision's are fetched through torchvision's own weights API, so the file is hash-checked and cached in
the torch hub cache (``$TORCH_HOME/hub/checkpoints``); with the file already there no
network is needed. The Hub's come through huggingface_hub's cache (hub.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError, UserValueError
from ..io.weights_file import WeightsFile, read_weights

PRETRAINED = {("alexnet_owt", "torchvision")}


def load_pretrained(model: nn.Module, name: str, weights: str) -> None:
    if (name, weights) not in PRETRAINED:
        have = ", ".join(f"{m} weights={w!r}" for m, w in sorted(PRETRAINED))
        raise UserValueError(f"no pretrained weights {weights!r} for {name}; available: {have}")
    from torchvision.models import AlexNet_Weights

    try:
        state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # no network, bad hash, ...
        raise UserError(
            f"could not load torchvision's AlexNet weights ({e}); put alexnet-owt-7be5be79.pth "
            "in the torch hub cache ($TORCH_HOME/hub/checkpoints) or connect to the internet"
        ) from None
    head = model.get_submodule("classifier.6")
    assert isinstance(head, nn.Linear)
    num_classes = head.out_features
    if num_classes != 1000:  # fine-tuning: keep the fresh classifier head
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict(state, strict=True)


def saved_weights(name: str, spec: str) -> WeightsFile:
    """This package's weights that ``spec`` names (``read_weights``), which must be ``name``'s."""
    f = read_weights(spec)
    if f.variant != name:
        raise UserValueError(f"{spec} holds {f.variant} weights, not {name}")
    return f


def load_state(model: nn.Module, state: dict[str, torch.Tensor], same_classes: bool) -> None:
    """Every layer from ``state``; the last one too when the classes are the same (else fine-tuning keeps it fresh)."""
    if not same_classes:
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        state = {k: v for k, v in state.items() if not k.startswith(last + ".")}
    try:
        model.load_state_dict(state, strict=same_classes)
    except RuntimeError as e:
        raise UserError(
            f"the weights do not fit this model: {(str(e).splitlines()[1:] or [str(e)])[0].strip()}"
        ) from None
