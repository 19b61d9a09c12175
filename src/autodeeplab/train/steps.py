"""One training step over the global batch, however it is spread (issue 15).

``batch_size`` is always the global batch. With ``world`` processes (torchrun) each rank loads its
``batch_size / world`` samples of it (:func:`~autodeeplab.runs.sampling.epoch_loader`'s shard) and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients during the backward pass; with
``accumulate_steps`` = k each rank runs its share in k micro-batches and adds the gradients, with DDP's
all-reduce only after the last. Either way the optimiser sees the gradient of the global batch's loss (each
part weighted by its share of the batch's samples and pixels, :func:`~autodeeplab.ops.losses.split_loss`):
with ``sync_bn`` the same as one process with the whole batch; k processes without it and one process with
k micro-batches the same as each other (each normalises the same sub-batches). The tests check both.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from autodeeplab.ops.losses import split_loss
from autodeeplab.runs.distributed import RankInfo, sum_over_ranks
from autodeeplab.runs.sync_bn import convert_sync_batch_norm
from autodeeplab.train.config import TrainConfig


def for_ranks(model: nn.Module, ranks: RankInfo, sync_bn: bool, device: torch.device) -> nn.Module:
    """``model`` ready for ``ranks``: itself in one process; in several, its batch norms made global when
    ``sync_bn`` (in place: call it before the optimiser is built, since new modules hold new parameters).
    :func:`distributed_forward` then wraps it for the step."""
    if ranks.world > 1 and sync_bn:
        convert_sync_batch_norm(model, device.type)
    return model


def distributed_forward(model: nn.Module, ranks: RankInfo, device: torch.device) -> nn.Module:
    """The module the training step calls: ``model`` itself in one process; in several, ``model`` wrapped
    in DDP, which shares its parameters, so the optimiser, checkpoints and evaluation keep using ``model``.
    DDP broadcasts rank 0's weights here (the same initialisation or checkpoint everywhere already)."""
    if ranks.world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # static_graph: the same modules run every step, but a found DiNTS network keeps the stem of a depth
    # that its first block does not read; DDP learns that set once instead of searching every step
    return DistributedDataParallel(model, device_ids=ids, static_graph=True)


def accumulated_step(
    forward: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    micro_batches: int,
    device: torch.device,
    layout: torch.memory_format = torch.contiguous_format,
    world: int = 1,
) -> torch.Tensor:
    """Forward and backward of this rank's ``images [b, C, *S]`` / ``masks [b, *S]`` (moved to ``device``,
    images in ``layout``) in ``micro_batches`` equal parts, gradients added into ``.grad`` (zero them
    before); this rank's share of the global batch's loss, detached, 0-dim on ``device`` (its mean over the
    ranks is the global batch's loss).

    One pass in one process is the plain ``criterion(model(x), y)``. Split, each part contributes its
    :func:`~autodeeplab.ops.losses.split_loss` of the global batch (whose counts of samples and of pixels
    not ignored are summed over the parts and the ranks first: one small all-reduce on the device, no wait
    for it on the host), times ``world`` because DDP averages the ranks' gradients: the sum is the gradient
    of the global batch's mean loss, the same as one process with the whole batch. Under DDP the gradients
    are all-reduced only with the last part (``no_sync`` before it)."""
    masks = masks.to(device)
    whole = micro_batches == 1 and world == 1
    parts = list(zip(images.chunk(micro_batches), masks.chunk(micro_batches), strict=True))
    counts = None if whole else sum_over_ranks(criterion.counts(masks), world)
    total: torch.Tensor | None = None
    for i, (x, y) in enumerate(parts):
        last = i == len(parts) - 1
        hold = forward.no_sync() if isinstance(forward, DistributedDataParallel) and not last else None
        with hold or contextlib.nullcontext():
            logits = forward(x.to(device, memory_format=layout))
            if counts is None:
                loss = criterion(logits, y)
            else:
                loss = split_loss(criterion, logits, y, counts) * world
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None
    return total


def spread(config: TrainConfig, world: int) -> str:
    """How the global batch is spread, for the start message (empty for one process, one pass)."""
    parts = [f"{world} processes"] if world > 1 else []
    if config.accumulate_steps > 1:
        parts.append(f"{config.accumulate_steps} micro-batches")
    if world > 1 and config.sync_bn:
        parts.append("synchronised batch norm")
    return f" ({', '.join(parts)})" if parts else ""
