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
views): every layout here is a concatenation along dim 0. One difference from ``torch.cat``: the convolutions
keep the parameters' storage itself for their backward, so a weight changed in place between a forward and
its backward would not be caught by autograd's version check (the steps never do that: the optimizer steps
after the backward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _Flat:
    """One group: the contiguous tensor and where its parameters' data must be for it to hold them."""

    __slots__ = ("fused", "addresses")

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        # normal tensors even when first called under inference mode (the parameters train later), in
        # shared memory when the parameters were (``share_memory()``)
        with torch.inference_mode(False), torch.no_grad():
            self.fused = torch.cat([p.detach() for p in params])
            if all(p.is_shared() for p in params):
                self.fused.share_memory_()
        start = 0
        for p in params:
            rows = p.shape[0]
            p.data = self.fused[start : start + rows]  # a view: the parameter now lives in ``fused``
            start += rows
        self.addresses = [p.data_ptr() for p in params]

    def holds(self, params: Sequence[nn.Parameter]) -> bool:
        """Whether ``params`` are still this group's slices. An address inside ``fused`` (alive as long as
        this group) can only be its slice, so the addresses decide; no reference to the parameters is kept
        (weak references would stop pickling and ``torch.utils.swap_tensors``)."""
        if len(params) != len(self.addresses):
            return False
        return all(p.data_ptr() == address for p, address in zip(params, self.addresses, strict=True))


_ATTRIBUTE = "_autodeeplab_flat"
"""Where the group lives: an attribute of its first parameter (it goes with the parameter; a copy of the
parameter has none, or one whose ``holds`` fails)."""


class _FromSlices(torch.autograd.Function):
    """Each group's ``fused`` tensor (its parameters' common storage) as a tensor whose gradient goes to
    the parameters: an incoming gradient ``[Σ rows, *K]`` is split into the parameters' ``[rows, *K]``
    slices (views). One call for all the groups of a state: autograd functions written in Python cost tens
    of microseconds per call, about what a copy of these small filters costs."""

    @staticmethod
    def forward(ctx, sizes: tuple[int, ...], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: D102
        # tensors: the groups' fused tensors, then every group's parameters; sizes: each group's count
        fused, params = tensors[: len(sizes)], tensors[len(sizes) :]
        ctx.set_materialize_grads(False)  # an unused group's parameters get no gradient, as with cat
        ctx.rows, start = [], 0
        for size in sizes:
            ctx.rows.append([p.shape[0] for p in params[start : start + size]])
            start += size
        return tuple(f.view_as(f) for f in fused)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # noqa: D102
        out: list[torch.Tensor | None] = [None] * (1 + len(grads))
        for grad, rows in zip(grads, ctx.rows, strict=True):
            if grad is None:
                out += [None] * len(rows)
            else:  # contiguous, so that each slice has its parameter's strides: AccumulateGrad keeps it
                out += grad.contiguous().split(rows)
        return tuple(out)


def flat_weights(groups: Sequence[Sequence[nn.Parameter]]) -> list[torch.Tensor]:
    """For each group, ``torch.cat(group)`` along dim 0 (``[Σ rows, *K]``), equal in value and gradient,
    without copying: each group's parameters are (made) consecutive slices of one tensor, which is returned.
    A group of one parameter: the parameter itself."""
    out: list[torch.Tensor | None] = []
    fused, params, sizes, where = [], [], [], []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        flat = getattr(group[0], _ATTRIBUTE, None)
        if flat is None or not flat.holds(group):
            flat = _Flat(group)
            setattr(group[0], _ATTRIBUTE, flat)
        where.append(len(out))
        out.append(flat.fused)
        fused.append(flat.fused)
        sizes.append(len(group))
        params.extend(group)
    if fused and torch.is_grad_enabled() and any(p.requires_grad for p in params):
        for index, tensor in zip(where, _FromSlices.apply(tuple(sizes), *fused, *params), strict=True):
            out[index] = tensor
    return out


def flat_weight(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """:func:`flat_weights` of one group."""
    return flat_weights([params])[0]
