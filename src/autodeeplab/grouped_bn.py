"""Batch norm over G independent groups stacked on the batch axis, exactly as G separate calls would do it.

The batched node call of the supernet runs the (up to) three inputs of a node through the node's one cell
as a single batch ``[G·N, C, *S]``. In training mode a BatchNorm must still normalise each group with its
own statistics and update its running statistics as the G sequential calls of the reference path would
(in group order); :func:`batch_norm` does both. It is also the one place where a BatchNorm module is
applied by the fast path, so that a cell evaluated once for G identical inputs (``repeats``) still updates
its running statistics G times.

Each group goes through the native kernel on its own (a batch chunk is a contiguous view in both the
contiguous and the channels-last layout) and the outputs are concatenated: measured on CPU this is 2.5–4×
faster than one custom kernel reducing over a strided ``[G, N, C, H·W]`` view, and exact by construction.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _momentum(bn: nn.Module) -> float:
    """Count one more batch for ``bn`` and return the factor of its running-statistics update."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _train_call(bn: nn.Module, x: torch.Tensor, repeats: int) -> torch.Tensor:
    """Training-mode ``bn(x)`` whose running statistics are updated ``repeats`` times with x's statistics."""
    if not bn.track_running_stats:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if repeats == 1:
        momentum = _momentum(bn)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)
    # momentum 1 into scratch buffers: the native kernel hands back the batch mean and unbiased variance
    mean, var = torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var)
    y = F.batch_norm(x, mean, var, bn.weight, bn.bias, True, 1.0, bn.eps)
    with torch.no_grad():
        for _ in range(repeats):
            momentum = _momentum(bn)
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var, momentum)
    return y


def batch_norm(x: torch.Tensor, bn: nn.Module, groups: int = 1, repeats: int = 1) -> torch.Tensor:
    """Apply BatchNorm module ``bn`` to ``x`` ``[G·N, C, *S]`` as G separate calls on its batch chunks would.

    ``repeats``: the reference path calls ``bn`` this many times with the same input (a shared input
    evaluated once here); the running statistics are updated that many times. In evaluation mode the
    running statistics normalise every group alike, so the whole batch goes through one native call.
    """
    if groups > 1 and repeats > 1:
        raise ValueError("batch_norm: groups and repeats cannot both exceed 1")
    if not bn.training and bn.track_running_stats:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    if groups == 1:
        return _train_call(bn, x, repeats)
    return torch.cat([_train_call(bn, chunk, 1) for chunk in x.chunk(groups)])
