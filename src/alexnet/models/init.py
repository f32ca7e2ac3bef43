"""Weight initialisation schemes, selectable by name.

``paper`` (§5): every weight ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7
("accelerates the early stages of learning by providing the ReLUs with positive inputs")
and 0 in conv1, conv3, fc8. Deep plain nets with std 0.01 start slowly; see docs/paper.md.
``kaiming``: He normal for every layer followed by a ReLU (fan_out for convolutions, fan_in
for fc6/fc7), N(0, 0.01) for the classifier fc8, zero biases. Keeps activations at unit scale
through all seven ReLU layers, so the plain LRN network starts learning at once.
``default``: PyTorch's own layer defaults, which is what ``torchvision.models.alexnet`` uses.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserValueError

INIT_SCHEMES = ("paper", "kaiming", "default")

# 1-based positions among the convolutions / linear layers whose bias the paper sets to 1.
PAPER_BIAS_ONE_CONV = (2, 4, 5)
PAPER_BIAS_ONE_FC = (6, 7)  # fc6, fc7 are the 1st and 2nd linear layers


def init_weights(model: nn.Module, scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise UserValueError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if scheme == "default":
        return
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(convs, start=1):
        if scheme == "paper":
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            bias = 1.0 if scheme == "paper" and i in PAPER_BIAS_ONE_CONV else 0.0
            nn.init.constant_(m.bias, bias)
    for i, m in enumerate(fcs, start=6):
        if scheme == "kaiming" and i < 5 + len(fcs):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.normal_(m.weight, 0.0, 0.01)
        bias = 1.0 if scheme == "paper" and i in PAPER_BIAS_ONE_FC else 0.0
        nn.init.constant_(m.bias, bias)
