"""Occlusion sensitivity and receptive fields (occlusion.py) on models whose answer is known."""

from __future__ import annotations

import torch
from torch import nn

from alexnet import create_model
from alexnet.inference.occlusion import occlusion_map, positions, receptive_field, top_patches


class RedDetector(nn.Module):
    """Class 1's logit is the amount of red in the image: the red square is the object."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0] - x[:, 1:].mean(1)).clamp(min=0).mean((1, 2)) * 15
        return torch.stack([torch.zeros_like(red), red], 1)


def _scene() -> torch.Tensor:
    x = torch.zeros(3, 96, 96)  # 0 after normalisation: the mean colour, as the occluder
    x[:, 20:40, 50:70] = torch.tensor([2.0, -1.0, -1.0])[:, None, None]
    return x


def test_occluding_the_object_lowers_its_probability() -> None:
    m = occlusion_map(RedDetector(), _scene(), patch=16, stride=4)
    assert m.target == 1 and m.base_prob > 0.8
    assert m.heat.shape == (96, 96) and m.grid.shape == (len(m.positions), len(m.positions))
    assert 0.0 <= float(m.heat.min()) and float(m.heat.max()) <= 1.0
    i, j = divmod(int(m.grid.argmin()), m.grid.shape[1])
    y, x = m.positions[i], m.positions[j]
    assert 20 - 16 < y < 40 and 50 - 16 < x < 70  # the most harmful square overlaps the object
    assert float(m.heat[22:38, 52:68].mean()) < m.base_prob - 0.05  # over the object: lower
    assert abs(float(m.heat[80:, :20].mean()) - m.base_prob) < 1e-6  # far from it: unchanged
    again = occlusion_map(RedDetector(), _scene(), patch=16, stride=4, batch=7)  # batching changes nothing
    assert torch.equal(again.grid, m.grid)
    assert positions(96, 16, 4)[-1] == 80 and positions(227, 45, 7)[-1] == 182  # the last square reaches the edge


def test_receptive_fields_and_top_patches() -> None:
    assert receptive_field(create_model("alexnet", 10)) == (163, 16, 17.0)  # conv5 of the 2012 network
    assert receptive_field(create_model("alexnet_owt", 10))[:2] == (163, 16)
    torch.manual_seed(0)
    model = create_model("alexnet", 10).eval()
    images = torch.randint(0, 256, (6, 3, 80, 80), dtype=torch.uint8)
    top = top_patches(model, images, lambda u8: u8.float() / 255 - 0.5, 72, [0, 5], k=3)
    assert top.units == [0, 5] and [len(p) for p in top.patches] == [3, 3]
    for vals in top.values:
        assert vals == sorted(vals, reverse=True)  # strongest first
    for row in top.patches:
        for p in row:
            assert p.dtype == torch.uint8 and p.shape[0] == 3 and 0 < p.shape[1] <= 72 and 0 < p.shape[2] <= 72
