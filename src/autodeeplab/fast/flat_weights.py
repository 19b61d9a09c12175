"""The filters of the edges that read one cell state, kept side by side in one tensor (issue 16).

The fused edges (:mod:`autodeeplab.fast.fused_edges`) run one convolution per primitive for the E edges
that read a state, with the E filters stacked along the output channels. Gathered with ``torch.cat`` at
every call, that is one copy kernel per primitive and state in the forward, and in the backward the fused
gradient is cut into E slices that ``AccumulateGrad`` copies again where they are not laid out like their
parameter (E copies, each an allocation and a kernel).

:func:`flat_weight` keeps the E parameters as consecutive slices of one contiguous tensor instead (each
parameter's storage is its slice: ``param.data`` is a view), so the stacked filter is that tensor itself,
without a copy, and its gradient comes back in one piece whose slices are the parameters' gradients as they
are (no copy either). The parameters stay ordinary leaf parameters — the same names, shapes, values,
``state_dict``, optimizers and checkpoints — and the arithmetic is unchanged, so the results are identical
bit for bit (tested). Anything that gives a parameter new storage (``.to()``, ``.double()``,
``load_state_dict(assign=True)``) is noticed at the next call, which lays the slices out again.

Slices along the first dimension are contiguous, which the fused SGD kernel needs (it mis-updates strided
views): every layout here is a concatenation along dim 0.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import nn


class _Flat:
    """One group: the contiguous tensor and the parameters whose storage it holds (by address)."""

    __slots__ = ("fused", "params", "addresses")

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        with torch.no_grad():
            self.fused = torch.cat([p.detach() for p in params])
        start = 0
        for p in params:
            rows = p.shape[0]
            p.data = self.fused[start : start + rows]  # a view: the parameter now lives in ``fused``
            start += rows
        self.params = [weakref.ref(p) for p in params]
        self.addresses = [p.data_ptr() for p in params]

    def holds(self, params: Sequence[nn.Parameter]) -> bool:
        """Whether ``params`` are still this group's slices (same objects, same storage)."""
        if len(params) != len(self.params):
            return False
        for p, ref, address in zip(params, self.params, self.addresses, strict=True):
            if ref() is not p or p.data_ptr() != address:
                return False
        return True


_ATTRIBUTE = "_autodeeplab_flat"
"""Where the group lives: an attribute of its first parameter (it goes with the parameter; a copy of the
parameter has none, or one whose ``holds`` fails)."""


class _FromSlices(torch.autograd.Function):
    """``fused`` (the parameters' common storage) as a tensor whose gradient goes to the parameters: the
    incoming gradient ``[Σ rows, *K]`` is split into the parameters' ``[rows, *K]`` slices (views)."""

    @staticmethod
    def forward(ctx, fused: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.rows = [p.shape[0] for p in params]
        return fused.view_as(fused)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: D102
        # contiguous, so that each slice has its parameter's strides and AccumulateGrad takes it as is
        return (None, *grad.contiguous().split(ctx.rows))


def flat_weight(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """``torch.cat(params)`` along dim 0 (``[Σ rows, *K]``), equal in value and gradient, without copying:
    the parameters are (made) consecutive slices of one tensor, which is returned. One parameter: itself."""
    if len(params) == 1:
        return params[0]
    group = getattr(params[0], _ATTRIBUTE, None)
    if group is None or not group.holds(params):
        group = _Flat(params)
        setattr(params[0], _ATTRIBUTE, group)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _FromSlices.apply(group.fused, *params)
    return group.fused
