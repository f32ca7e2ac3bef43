"""torch.hub entry points: ``torch.hub.load("path/to/clone", "alexnet", source="local")``, or from GitHub your
fork's name, ``torch.hub.load("USER/alexnet", "alexnet")``. Below, ``repo`` is either (a path with source="local"):

    model = torch.hub.load(repo, "alexnet")                                  # the paper's network, paper init
    model = torch.hub.load(repo, "alexnet", weights="imported.safetensors")  # `alexnet import-weights` output
    model = torch.hub.load(repo, "alexnet_owt", weights="torchvision")       # torchvision's IMAGENET1K_V1
    model = torch.hub.load(repo, "alexnet_bn", weights="runs/fast")          # a training run or checkpoint
    model = torch.hub.load(repo, "alexnet", weights="hf-hub:ORG/NAME")       # a Hub repository (`alexnet[hub]`)

With ``weights``, the model comes in eval mode with the classes and preprocessing it was trained with as
attributes ``class_names`` and ``preprocess`` (an ``alexnet.data.preprocess.Preprocess``); ``num_classes``
(default 1000 without weights) must then match them, and other options are refused. Nothing is downloaded
except torchvision's weights and Hub repositories when asked for by name (the Hub's through huggingface_hub's
cache: ``HF_HUB_OFFLINE=1`` works once they are there).
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "PIL", "yaml", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:  # the repository's src layout, for a clone that is not pip-installed
    sys.path.insert(0, _SRC)


def _build(variant, weights=None, num_classes=None, **options):
    from alexnet import create_model
    from alexnet.errors import UserError
    from alexnet.io.weights import load_weights

    if weights is None:
        return create_model(variant, 1000 if num_classes is None else num_classes, **options)
    if str(weights) == "torchvision" and variant != "alexnet_owt":  # before any download
        raise ValueError(f"weights='torchvision' are torchvision's AlexNet: load 'alexnet_owt', not {variant!r}")
    if options:  # as torchvision's builders: the weights fix the architecture
        raise ValueError(f"{', '.join(sorted(options))}: set by the weights; options apply without weights only")
    try:
        loaded = load_weights(str(weights))
    except UserError as e:
        raise ValueError(str(e)) from None
    if loaded.variant != variant:
        raise ValueError(f"{weights} holds {loaded.variant} weights, not {variant}")
    if num_classes not in (None, len(loaded.class_names)):  # torchvision raises here too, never a silent mismatch
        raise ValueError(
            f"num_classes={num_classes}, but {weights} has {len(loaded.class_names)} classes (to "
            "train it on other classes: alexnet train --weights ...)"
        )
    model = loaded.model
    model.class_names, model.preprocess = loaded.class_names, loaded.preprocess
    return model


def alexnet(weights=None, num_classes=None, **options):
    """The 2012 paper's network (two towers, LRN, 227x227). ``weights``: a .safetensors file (e.g. Caffe's
    bvlc_alexnet through `alexnet import-weights`), a run directory or a checkpoint."""
    return _build("alexnet", weights, num_classes, **options)


def alexnet_bn(weights=None, num_classes=None, **options):
    """The paper's topology with BatchNorm instead of LRN. ``weights``: a .safetensors file, run or checkpoint."""
    return _build("alexnet_bn", weights, num_classes, **options)


def alexnet_owt(weights=None, num_classes=None, **options):
    """torchvision's "one weird trick" AlexNet. ``weights``: "torchvision", a .safetensors file, run or checkpoint."""
    return _build("alexnet_owt", weights, num_classes, **options)
