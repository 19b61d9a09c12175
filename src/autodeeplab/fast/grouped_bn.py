"""Batch norm for the fast path, exactly as the reference calls of the BatchNorm modules would do it.

The fast path evaluates things together that the reference evaluates one by one:

- groups: the (up to) three inputs of a node run through the node's one cell as one batch ``[G·N, C, *S]``;
  in training mode each group must still be normalised with its own statistics, and the running statistics
  updated as the G sequential calls would (in group order);
- repeats: an input shared by the G groups (h^{l-2}) is evaluated once, and its BNs still record its
  statistics G times;
- several modules: the edges that read one state run as one convolution over ``E·C`` channels; their E BN
  modules then normalise as one call (:func:`multi_batch_norm`), or, after a pool (no weights, so the same
  input for every edge), as one normalisation recorded by every module (:func:`shared_batch_norm`);
- channel groups: the G inputs of a node side by side in the channels, ``[N, G·C, *S]``
  (:mod:`autodeeplab.fast.channel_groups`): one native call normalises every group with its own
  statistics by construction (per channel), and the modules record the G groups' statistics in order.

Each group goes through the native kernel on its own (a batch chunk is a contiguous view in the contiguous
and the channels-last layout) and the outputs are concatenated: measured on CPU this is 2.5–4× faster than
one custom kernel reducing over a strided ``[G, N, C, H·W]`` view, and exact by construction. Batch
statistics are the ones the native kernel returns with its output (mean and ``1/sqrt(var + eps)``), and are
folded into the modules' running statistics in closed form (:mod:`autodeeplab.fast.running_stats`).

``scale`` fuses the α weighting that follows every BN of a mixed op into the BN's affine transform
(see :func:`_fold_scale`).
Inside :func:`running_stats_frozen` (the recomputation of activation checkpointing) no running statistic
moves: the recomputed forward normalises with the same batch statistics and must not count them twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.fast.running_stats import owes_running_stats, record_running_stats, settle_running_stats

_FROZEN: contextvars.ContextVar[bool] = contextvars.ContextVar("autodeeplab_bn_stats_frozen", default=False)


@contextlib.contextmanager
def running_stats_frozen() -> Iterator[None]:
    """Inside: this module's functions normalise with batch statistics but move no running statistic."""
    token = _FROZEN.set(True)
    try:
        yield
    finally:
        _FROZEN.reset(token)


def _normalize(x, weight, bias, eps: float, stats=(None, None), momentum: float = 0.0):
    """Training-mode BN of ``x``; ``stats`` buffers get the native momentum update."""
    return F.batch_norm(x, stats[0], stats[1], weight, bias, True, momentum, eps)


def _grouped_normalize(x, groups: int, weight, bias, eps: float):
    """``(BN of each of x's G batch chunks, concatenated; G batch means [C]; G inverse deviations [C])``.

    The statistics are the native kernel's own (``1/sqrt(biased variance + eps)``), returned with every
    normalisation at no cost: no scratch buffers, no per-call update (the running statistics are moved
    together later, :mod:`autodeeplab.fast.running_stats`). The recomputation of a checkpoint calls the same
    kernels, so it saves the same tensors as the forward did.
    """
    chunks = x.chunk(groups) if groups > 1 else [x]
    outputs, means, invstds = [], [], []
    for chunk in chunks:
        out, mean, invstd = torch.native_batch_norm(chunk, weight, bias, None, None, True, 0.0, eps)
        outputs.append(out)
        means.append(mean)
        invstds.append(invstd)
    return (torch.cat(outputs) if groups > 1 else outputs[0]), means, invstds


def _parameter_dtype(dtype: torch.dtype) -> torch.dtype:
    """``torch.promote_types(dtype, torch.float32)`` for the floating dtypes, decided in Python (the
    operator is a dispatch per call)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _fold_scale(scale, weight, bias, channels: int):
    """Fold a factor into the affine transform, ``s·(x̂·γ + β) = x̂·(γ·s) + β·s``.

    The product then costs no pass over the activation, and autograd keeps nothing more than the BN
    itself does (its input): the BN output that a product ``s · BN(x)`` would keep for ``s``'s gradient
    is not needed, since ``∂L/∂(γ·s)`` comes out of the BN's own backward.
    """
    s = scale.expand(channels) if scale.dim() == 0 else scale
    s = s.to(_parameter_dtype(s.dtype))  # BN parameters stay fp32 under bf16/fp16
    if weight is None:  # no affine parameters: γ = 1, β = 0
        # a real [C] vector, not the stride-0 expansion: the CPU kernel's channels-last backward reads
        # the weight as contiguous and returned a wrong input gradient (torch 2.13, tested)
        return s.contiguous(), None
    return weight * s, bias * s


def batch_norm(
    x: torch.Tensor,
    bn: nn.Module,
    groups: int = 1,
    repeats: int = 1,
    scale: torch.Tensor | None = None,
    channel_groups: int = 1,
) -> torch.Tensor:
    """Apply BatchNorm module ``bn`` to ``x`` ``[G·N, C, *S]`` as G separate calls on its batch chunks would.

    ``repeats``: the reference path calls ``bn`` this many times with the same input; the running
    statistics are updated that many times. ``scale`` (0-dim): return ``scale · bn(x)`` without keeping
    ``bn(x)`` for the backward. In evaluation mode the running statistics normalise every group alike, so
    the whole batch goes through one native call. ``channel_groups`` as in :func:`multi_batch_norm`.
    """
    return multi_batch_norm(x, [bn], groups, repeats, scale, channel_groups)


def _count(x: torch.Tensor, groups: int) -> int:
    """Values per channel and batch group of ``x`` ``[G·N, C, *S]``: N·prod(S), from the shape (indexing
    ``x`` for it would cost two dispatches a call)."""
    return math.prod(x.shape[2:]) * x.shape[0] // groups


def _channel_factor(t: torch.Tensor, width: int, channels: int, modules: int, k: int) -> torch.Tensor:
    """A factor per module ``[E]`` or per channel ``[E·C]`` (``width`` = C) as one per channel of the
    ``channels`` = K·E·C of ``[N, K·E·C, *S]``."""
    if t.shape[0] == modules and width > 1:
        t = t.repeat_interleave(width)
    return t.repeat(k) if t.shape[0] != channels else t


def multi_batch_norm(
    x: torch.Tensor,
    bns: Sequence[nn.Module],
    groups: int = 1,
    repeats: int = 1,
    scale: torch.Tensor | None = None,
    channel_groups: int = 1,
) -> torch.Tensor:
    """E BatchNorm modules of C channels each on ``x`` ``[G·N, E·C, *S]`` (module i: channels i·C..i·C+C).

    ``scale``: 0-dim, ``[E]`` (one factor per module), ``[E·C]`` (one per channel) or ``[K·E·C]``, folded
    into the affine transform. ``channel_groups`` K: ``x`` is ``[N, K·E·C, *S]``, K inputs side by side in
    the channels (group k's module i: channels (k·E + i)·C..), each normalised with its own statistics
    (one call, the statistics are per channel) and recorded by the modules in group order, as K calls on
    the groups one after another would. Otherwise as :func:`batch_norm`.
    """
    k = channel_groups
    if groups > 1 and (repeats > 1 or k > 1):
        raise ValueError("batch_norm: groups cannot exceed 1 with repeats or channel groups")
    first = bns[0]
    channels = x.shape[1] // (len(bns) * k)
    if scale is not None and scale.dim() == 1:
        scale = _channel_factor(scale, channels, x.shape[1], len(bns), k)
    weight = bias = None
    if first.affine:
        weight = torch.cat([bn.weight for bn in bns]) if len(bns) > 1 else first.weight
        bias = torch.cat([bn.bias for bn in bns]) if len(bns) > 1 else first.bias
        if k > 1:
            weight, bias = weight.repeat(k), bias.repeat(k)
    if scale is not None:
        weight, bias = _fold_scale(scale, weight, bias, x.shape[1])
    if not first.training and first.track_running_stats:
        mean = torch.cat([bn.running_mean for bn in bns]) if len(bns) > 1 else first.running_mean
        var = torch.cat([bn.running_var for bn in bns]) if len(bns) > 1 else first.running_var
        if k > 1:
            mean, var = mean.repeat(k), var.repeat(k)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, first.eps)
    record = first.track_running_stats and not _FROZEN.get()
    tracked = first.track_running_stats and first.momentum is not None
    single = len(bns) == 1 and tracked and repeats == 1 and groups == 1 and k == 1
    if single:
        # The common single call: the kernel updates the module's buffers itself (after what the module
        # still owes, so that its updates stay in order). A recomputation (frozen) makes the same call with
        # momentum 0 (r ← 1·r + 0·s: unchanged), so that it saves the same tensors as the forward did.
        if record:
            if owes_running_stats(first):
                settle_running_stats()
            with torch.no_grad():
                first.num_batches_tracked.add_(1)
        stats = (first.running_mean, first.running_var)
        return _normalize(x, weight, bias, first.eps, stats, first.momentum if record else 0.0)
    y, means, invstds = _grouped_normalize(x, groups, weight, bias, first.eps)
    if record:
        # with K channel groups: one [K·E·C] each, the groups side by side
        record_running_stats(bns, means, invstds, _count(x, groups), repeats, in_channels=k > 1)
    return y


def shared_batch_norm(
    x: torch.Tensor, bns: Sequence[nn.Module], groups: int = 1, repeats: int = 1, channel_groups: int = 1
) -> torch.Tensor:
    """E affine-free BatchNorm modules applied to the same input ``x`` ``[G·N, C, *S]`` (or, with
    ``channel_groups`` K, ``[N, K·C, *S]`` as in :func:`multi_batch_norm`).

    Training mode: they normalise alike (batch statistics), so the result (``x``'s shape) is computed
    once and every module records the statistics. Evaluation mode: each module's running statistics,
    ``[E, *x.shape]``.
    """
    first, k = bns[0], channel_groups
    if groups > 1 and (repeats > 1 or k > 1):
        raise ValueError("shared_batch_norm: groups cannot exceed 1 with repeats or channel groups")
    if any(bn.affine for bn in bns):
        raise ValueError("shared_batch_norm: modules with affine parameters normalise differently")
    if not first.training and first.track_running_stats:
        stats = [(bn.running_mean, bn.running_var) for bn in bns]
        if k > 1:
            stats = [(mean.repeat(k), var.repeat(k)) for mean, var in stats]
        eps = [bn.eps for bn in bns]
        return torch.stack(
            [F.batch_norm(x, m, v, None, None, False, 0.0, e) for (m, v), e in zip(stats, eps, strict=True)]
        )
    record = first.track_running_stats and not _FROZEN.get()
    y, means, invstds = _grouped_normalize(x, groups, None, None, first.eps)
    if record:  # the same statistics for every module
        record_running_stats(bns, means, invstds, _count(x, groups), repeats, shared=True, in_channels=k > 1)
    return y
