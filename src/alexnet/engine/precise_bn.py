"""BatchNorm statistics recomputed for the network as it is validated (``train.bn_recalibrate``).

Training leaves in each BatchNorm layer a running average of its batch statistics over the training crops. With
progressive resizing (``fast``: 131-163 px crops, objects enlarged by RandomResizedCrop) those crops are unlike
the 227 px centre crops the network is validated on, the train/test resolution discrepancy (Touvron et al. 2019,
"Fixing the train-test resolution discrepancy", who adapt the network to the test view); and the average spans
weights that kept changing (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm": PreciseBN recomputes it with
the final weights). Before the last validation, ``recalibrate`` recomputes the statistics with the final weights
over ``train.bn_recalibrate`` training images in the validation's view (resize, centre crop): an equal-weight
average over the batches, no gradient, no other change (dropout stays off). The
images are the first of a fixed shuffle of the training set, so a resumed run recomputes the same statistics.
Under DDP every rank takes its share of each global batch; with ``sync_bn`` (GlobalBatchNorm2d) each batch's
statistics are global, the same as one process's (tests/test_distributed.py); without it the ranks' averages are
averaged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..data.batches import Batches
from ..data.transforms import Normalizer, tta_center
from ..inference import autocast
from ..parallel import distributed
from ..parallel.distributed import GlobalBatchNorm2d
from .setup import Session


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibration_batches(s: Session, model: nn.Module) -> int:
    """How many of its batches each rank runs for ``model``: train.bn_recalibrate images over the global batch,
    rounded up, and only whole global batches (the same images on 1 and N processes; every batch weighs the same),
    at least one; 0 when it is off or ``model`` has no BatchNorm."""
    n, r = s.cfg.train.bn_recalibrate, s.data.recalibration
    if not n or r is None or not batch_norms(model):
        return 0
    return batches_for(n, r.batch_size * s.dist.world, r.num_samples)


def recalibration_images(s: Session, model: nn.Module) -> int:
    """The images all ranks together recompute ``model``'s statistics on (what ``--budget`` prices)."""
    k = recalibration_batches(s, model)
    return k * s.data.recalibration.batch_size * s.dist.world if k and s.data.recalibration is not None else 0


def batches_for(images: int, global_batch: int, available: int) -> int:
    return max(1, min(math.ceil(images / global_batch), available // global_batch))


def recalibrate(s: Session, model: nn.Module) -> int:
    """Recompute ``model``'s BatchNorm running statistics as train.bn_recalibrate asks (see the module's text);
    returns the images this rank used (0: nothing to do: no BatchNorm, or train.bn_recalibrate 0)."""
    k = recalibration_batches(s, model)
    if not k:
        return 0
    assert s.data.recalibration is not None and s.data.preprocess.crop is not None
    t = s.cfg.train
    views = validation_views(s.data.recalibration, k, s.data.normalizer, s.data.preprocess.crop, s.device,
                             bool(t.channels_last))  # fmt: skip
    return recompute(model, views, s.device, t.amp, s.dist.world)


def validation_views(batches: Batches, k: int, normalizer: Normalizer, crop: int, device: torch.device,
                     channels_last: bool) -> Iterator[torch.Tensor]:  # fmt: skip
    """The first ``k`` batches of epoch 0 of ``batches`` as validation sees images: normalised, centre-cropped."""
    norm = normalizer.to(device)
    for x, _, _ in itertools.islice(batches.epoch(0), k):
        view = tta_center(norm(x.to(device, non_blocking=True)), crop)[0]
        yield view.contiguous(memory_format=torch.channels_last) if channels_last else view


@torch.no_grad()
def recompute(model: nn.Module, views: Iterable[torch.Tensor], device: torch.device, amp: str = "none",
              world: int = 1) -> int:  # fmt: skip
    """``model``'s BatchNorm running statistics, reset and recomputed as the equal-weight average over ``views``;
    nothing else changes. Returns the images seen."""
    bns = batch_norms(model)
    was_training, momenta, seen = model.training, [m.momentum for m in bns], 0
    model.eval()  # dropout off; only the BatchNorm layers collect statistics
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
        m.train()
    for view in views:
        with autocast(device, amp):
            model(view)
        seen += view.shape[0]
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        if world > 1 and not isinstance(m, (GlobalBatchNorm2d, nn.SyncBatchNorm)):  # not global already
            for buf in (m.running_mean, m.running_var):
                if buf is not None:  # (None: track_running_stats=False)
                    buf.copy_(distributed.all_reduce_sum(buf.clone()) / world)
    model.train(was_training)
    return seen
