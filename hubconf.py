"""torch.hub entry points: ``torch.hub.load("OWNER/alexnet", "alexnet")`` (or ``source="local"`` with a clone).

    model = torch.hub.load(repo, "alexnet")                                  # the paper's network, paper init
    model = torch.hub.load(repo, "alexnet", weights="imported.safetensors")  # `alexnet import-weights` output
    model = torch.hub.load(repo, "alexnet_owt", weights="torchvision")       # torchvision's IMAGENET1K_V1
    model = torch.hub.load(repo, "alexnet_bn", weights="runs/fast")          # a training run or checkpoint

With ``weights``, the model comes in eval mode with the classes and preprocessing it was trained with as
attributes ``class_names`` and ``preprocess`` (an ``alexnet.data.preprocess.Preprocess``). Nothing is
downloaded except torchvision's weights when asked for by name.
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "PIL", "yaml", "safetensors"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:  # the repository's src layout, for a clone that is not pip-installed
    sys.path.insert(0, _SRC)


def _build(variant, weights=None, num_classes=1000, **options):
    from alexnet import create_model
    from alexnet.errors import UserError
    from alexnet.weights import load_weights

    if weights is None:
        return create_model(variant, num_classes, **options)
    try:
        loaded = load_weights(str(weights))
    except UserError as e:
        raise ValueError(str(e)) from None
    if loaded.variant != variant:
        raise ValueError(f"{weights} holds {loaded.variant} weights, not {variant}")
    model = loaded.model
    model.class_names, model.preprocess = loaded.class_names, loaded.preprocess
    return model


def alexnet(weights=None, num_classes=1000, **options):
    """The 2012 paper's network (two towers, LRN, 227x227). ``weights``: a .safetensors file (e.g. Caffe's
    bvlc_alexnet through `alexnet import-weights`), a run directory or a checkpoint."""
    return _build("alexnet", weights, num_classes, **options)


def alexnet_bn(weights=None, num_classes=1000, **options):
    """The paper's topology with BatchNorm instead of LRN. ``weights``: a .safetensors file, run or checkpoint."""
    return _build("alexnet_bn", weights, num_classes, **options)


def alexnet_owt(weights=None, num_classes=1000, **options):
    """torchvision's "one weird trick" AlexNet. ``weights``: "torchvision", a .safetensors file, run or checkpoint."""
    return _build("alexnet_owt", weights, num_classes, **options)
