"""Progressive resizing: the training crop of each epoch, from a low start up to the final crop.

As in fast.ai's DAWNBench ImageNet runs (128 -> 224 -> 288 px) and FFCV's ResNet recipes (160 -> 192 px, rising
late in the run): early epochs learn coarse features at a fraction of the cost, the last ones see full
resolution. For AlexNet the saving is the convolutions': measured on this repo's 2-core AVX2 CPU (fp32,
channels_last, alexnet_bn, batch 128), one training step takes 6.4 s at 227 px, 4.7 s at 195, 3.0 s at 163,
2.0 s at 131 and 1.4 s at 99, while fc6-fc8 cost the same at any size (adaptive pooling to 6x6).

Sizes are the final crop minus multiples of 32 (the network's total stride: conv1's 4 times three 2x pools), so
every size meets the layers' windows exactly as the final crop does (227, 195, 163, 131 for the paper's 227;
224, 192, 160, 128 for torchvision's 224). One size per epoch (a store or a data-loader worker resizes once
per epoch; a compiled model sees few shapes), read at the epoch's midpoint of the run, and never below an
earlier epoch's (``rising``: a --budget check that lengthens the run moves the ramp later, which would otherwise
send the next epoch back down). Evaluation is always at ``data.crop``; the ramp ends there too, or at
``data.res_end`` below it (then the network is tested above its last training size, as FFCV validates
ResNet-50 at 256 px after training up to 192).
"""

from __future__ import annotations

import itertools
import math

STRIDE = 32  # AlexNet's total stride up to pool5


def allowed_sizes(crop: int, start: int) -> list[int]:
    """``crop``, ``crop - 32``, ... down to the smallest one at or above ``start`` (ascending): ``start`` is a
    floor, so a valid ``data.res_start`` (at least the model's minimum input) never yields a smaller crop."""
    sizes = [crop]
    while sizes[-1] - STRIDE >= start:
        sizes.append(sizes[-1] - STRIDE)
    return sorted(sizes)


def ladder_below(crop: int, size: int | None) -> int:
    """The largest of ``crop``, ``crop - 32``, ... at or below ``size`` (``crop`` when ``size`` is None or above
    it): where the ramp ends for a ``data.res_end`` (between two steps, the next one down, never above it)."""
    return crop if size is None or size >= crop else crop - STRIDE * -(-(crop - size) // STRIDE)


def size_at(frac: float, crop: int, start: int | None, ramp: tuple[float, float] | list[float]) -> int:
    """The training crop at fraction ``frac`` of the run: ``start`` until ``ramp[0]``, linear up to ``crop`` at
    ``ramp[1]``, then ``crop``; rounded to the nearest allowed size."""
    if start is None or start >= crop:
        return crop
    a, b = ramp
    t = 1.0 if frac >= b else 0.0 if frac <= a else (frac - a) / (b - a)
    want = start + (crop - start) * t
    lowest = crop - STRIDE * ((crop - start) // STRIDE)  # allowed_sizes(crop, start)[0], in O(1): called per epoch
    steps = math.floor((want - lowest) / STRIDE + 0.5)  # the nearest size, the larger one on a tie
    return lowest + STRIDE * min(max(steps, 0), (crop - lowest) // STRIDE)


def epoch_sizes(crop: int, start: int | None, ramp: tuple[float, float] | list[float], steps_per_epoch: int,
                total_steps: int) -> list[int]:  # fmt: skip
    """One size per epoch of a run of ``total_steps`` steps (the last epoch may be partial)."""
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    return [epoch_size_at(e, crop, start, ramp, steps_per_epoch, total_steps) for e in range(epochs)]


def epoch_size_at(epoch: int, crop: int, start: int | None, ramp: tuple[float, float] | list[float],
                  steps_per_epoch: int, total_steps: int) -> int:  # fmt: skip
    """``epoch_sizes(...)[epoch]``, an epoch past the run's end taking the last one's, without the list."""
    epoch = min(epoch, max(1, math.ceil(total_steps / steps_per_epoch)) - 1)
    steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
    return size_at((epoch * steps_per_epoch + steps / 2) / total_steps, crop, start, ramp)


def rising(sizes: list[int], floor: int = 0) -> list[int]:
    """``sizes`` with each at least every one before it and ``floor``: the crops never step down."""
    return list(itertools.accumulate(sizes, max, initial=floor))[1:]
