"""The 2012 paper's AlexNet (Krizhevsky, Sutskever, Hinton), and its BatchNorm variant.

Architecture only: weights metadata lives in ``registry.py``, initialisation in ``init.py``.
Layer sizes follow the paper's Figure 2 with a 227x227 input (the paper says 224, but
(224 - 11) / 4 + 1 is not an integer; 227 gives the 55x55 maps the paper reports).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import UserValueError
from .layers import DROPOUT_STREAMS, KeyedDropout, Network, check_input_size, pool_to_grid
from .lrn import PAPER_LRN, GroupedLRN

# Smallest input whose pool3 output is at least 1x1:
# conv1 (67-11)/4+1=15, pool1 7, conv2 7, pool2 3, conv3-5 3, pool3 1.
MIN_INPUT_SIZE = 67


class AlexNet(Network):
    """AlexNet as published, as one module on one device.

    ``norm="lrn"``: the paper's network (LRN after conv1 and conv2, per tower; ``lrn_groups=1`` normalises
    across all maps instead, as Caffe's ``bvlc_alexnet`` does).
    ``norm="bn"``: BatchNorm2d after every convolution instead of LRN (conv biases
    dropped: BatchNorm's shift replaces them).

    The two-GPU split is kept as grouped convolutions (``groups=2`` in conv2, conv4 and
    conv5), so channels ``[0, C/2)`` are tower A and ``[C/2, C)`` are tower B.
    """

    default_input_size = 227
    min_input_size = MIN_INPUT_SIZE

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        norm: str = "lrn",
        dropout: float = 0.5,
        lrn_size: int = PAPER_LRN.size,
        lrn_alpha: float = PAPER_LRN.alpha,
        lrn_beta: float = PAPER_LRN.beta,
        lrn_k: float = PAPER_LRN.k,
        lrn_groups: int = 2,
    ) -> None:
        super().__init__()
        if norm not in ("lrn", "bn"):
            raise UserValueError(f"norm must be 'lrn' or 'bn', got {norm!r}")
        self.num_classes = num_classes
        self.norm = norm
        bn = norm == "bn"

        def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=not bn)

        def lrn(c: int) -> nn.Module:
            if bn:
                return nn.BatchNorm2d(c)
            return GroupedLRN(lrn_size, lrn_alpha, lrn_beta, lrn_k, groups=lrn_groups)

        layers: list[tuple[str, nn.Module]] = [
            ("conv1", conv(3, 96, 11, stride=4)),
            *([("bn1", nn.BatchNorm2d(96))] if bn else []),
            ("relu1", nn.ReLU(inplace=True)),
            *([] if bn else [("norm1", lrn(96))]),
            ("pool1", nn.MaxPool2d(3, 2)),  # overlapping pooling, paper §3.4
            ("conv2", conv(96, 256, 5, pad=2, groups=2)),
            *([("bn2", nn.BatchNorm2d(256))] if bn else []),
            ("relu2", nn.ReLU(inplace=True)),
            *([] if bn else [("norm2", lrn(256))]),
            ("pool2", nn.MaxPool2d(3, 2)),
            ("conv3", conv(256, 384, 3, pad=1)),  # the one conv that reads both towers
            *([("bn3", nn.BatchNorm2d(384))] if bn else []),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", conv(384, 384, 3, pad=1, groups=2)),
            *([("bn4", nn.BatchNorm2d(384))] if bn else []),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", conv(384, 256, 3, pad=1, groups=2)),
            *([("bn5", nn.BatchNorm2d(256))] if bn else []),
            ("relu5", nn.ReLU(inplace=True)),
            ("pool3", nn.MaxPool2d(3, 2)),
        ]
        self.features = nn.Sequential(OrderedDict(layers))
        # Identity at 227x227 (pool3 is already 6x6); lets other input sizes reach fc6.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(256 * 6 * 6, 4096)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("drop6", KeyedDropout(dropout, DROPOUT_STREAMS["fc6"])),  # paper §4.2: dropout 0.5 in fc6 and fc7
                    ("fc7", nn.Linear(4096, 4096)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("drop7", KeyedDropout(dropout, DROPOUT_STREAMS["fc7"])),
                    ("fc8", nn.Linear(4096, num_classes)),
                ]
            )
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, "alexnet_bn" if self.norm == "bn" else "alexnet")
        x = self.features(x)  # conv1 (B,96,55,55) ... pool3 (B,256,6,6) at 227x227
        return pool_to_grid(x, self.avgpool)  # (B, 256, 6, 6)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (B, 9216)
        c = self.classifier.get_submodule
        x = c("drop6")(c("relu6")(c("fc6")(x)))  # (B, 4096)
        x = c("drop7")(c("relu7")(c("fc7")(x)))  # (B, 4096): the fc7 features of the paper's Fig. 4
        if pre_logits:
            return x
        return c("fc8")(x)  # (B, num_classes)
