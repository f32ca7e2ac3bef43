"""Pretrained weights: torchvision's IMAGENET1K_V1 for ``alexnet_owt``.

Fetched through torchvision's own weights API, so the file is hash-checked and cached in
the torch hub cache (``$TORCH_HOME/hub/checkpoints``); with the file already there no
network is needed.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError, UserValueError

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
    num_classes = model.classifier[6].out_features
    if num_classes != 1000:  # fine-tuning: keep the fresh classifier head
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict(state, strict=True)
