from .alexnet import AlexNet
from .init import INIT_SCHEMES, init_weights
from .owt import AlexNetOWT
from .registry import IMAGENET_MEAN, IMAGENET_STD, MODELS, ModelInfo, create_model, get_model_info, list_models

__all__ = [
    "AlexNet",
    "AlexNetOWT",
    "INIT_SCHEMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "ModelInfo",
    "create_model",
    "get_model_info",
    "init_weights",
    "list_models",
]
