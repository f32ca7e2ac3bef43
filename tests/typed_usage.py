"""The public API as users call it, for the type checker: test.sh's `mypy` checks this file with --strict's flags
(pyproject.toml), so a documented call that users' own type checks would reject fails the suite. Not run."""

from __future__ import annotations

import torch

import alexnet
from alexnet.errors import UserError
from alexnet.models import Network
from alexnet.weights import Loaded, load_weights


def usage(run: str) -> list[str]:
    model: Network = alexnet.create_model("alexnet", 10, init="paper", seed=0, lrn_k=2.0)
    x = torch.randn(1, 3, model.min_input_size, model.min_input_size)
    maps: torch.Tensor = model.forward_features(x)  # (B, 256, 6, 6)
    fc7: torch.Tensor = model.forward_head(maps, pre_logits=True)  # (B, 4096)
    logits: torch.Tensor = model(x)
    tuned = alexnet.create_model("alexnet_owt", model.num_classes, weights=run)
    loaded: Loaded = load_weights(run, device="cpu", towers=None)
    split = load_weights(run, towers="cpu,cpu").model  # the two-tower network has the same interface
    both = [split.forward_head(split.forward_features(x)), tuned.forward_head(fc7 + logits.sum(), pre_logits=False)]
    try:
        alexnet.create_model("alexnet_bn", weights="hf-hub:org/name")
    except UserError as e:
        return [str(e), *loaded.class_names, str(loaded.preprocess.crop), str(len(both))]
    return alexnet.list_models()
