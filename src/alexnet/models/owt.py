"""The "one weird trick" AlexNet (Krizhevsky 2014), exactly as torchvision builds it.

State-dict keys and shapes equal ``torchvision.models.alexnet``'s, so its pretrained
weights load with ``strict=True``. Differences from the 2012 network: 64-192-384-256-256
filters, one tower (no grouped convolutions), no LRN, conv1 padding 2 (so 224 works),
dropout *before* fc6 and fc7, and an adaptive average pool to 6x6.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DROPOUT_STREAMS, KeyedDropout, Network, check_input_size, pool_to_grid

# conv1 (63+4-11)/4+1=15, pool1 7, pool2 3, pool3 1 (torchvision's meta says min_size 63).
MIN_INPUT_SIZE = 63


class AlexNetOWT(Network):
    default_input_size = 224
    min_input_size = MIN_INPUT_SIZE

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            KeyedDropout(dropout, DROPOUT_STREAMS["fc6"]),  # on fc6's input here (9,216 units)
            nn.Linear(256 * 6 * 6, 4096),  # 1: fc6
            nn.ReLU(inplace=True),
            KeyedDropout(dropout, DROPOUT_STREAMS["fc7"]),
            nn.Linear(4096, 4096),  # 4: fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # 6: fc8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, "alexnet_owt")
        x = self.features(x)  # (B, 64, 55, 55) ... (B, 256, 6, 6) at 224x224
        return pool_to_grid(x, self.avgpool)  # (B, 256, 6, 6)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (B, 9216)
        x = self.classifier[:6](x)  # (B, 4096): fc7 features
        if pre_logits:
            return x
        return self.classifier[6](x)  # (B, num_classes)
