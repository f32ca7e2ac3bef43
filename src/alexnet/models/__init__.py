"""The networks: the paper's AlexNet, its BatchNorm variant and torchvision's, by name (``create_model``)."""

from .alexnet import AlexNet
from .init import INIT_SCHEMES, init_weights
from .layers import Network
from .owt import AlexNetOWT
from .registry import (
    MODELS,
    PAPER_ILSVRC2012,
    PAPER_PUBLISHED,
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
)

__all__ = [
    "AlexNet",
    "AlexNetOWT",
    "INIT_SCHEMES",
    "PAPER_ILSVRC2012",
    "PAPER_PUBLISHED",
    "MODELS",
    "ModelInfo",
    "Network",
    "create_model",
    "get_model_info",
    "init_weights",
    "list_models",
]
