"""The filters of the edges that read one cell state, kept side by side in one tensor (issue 16).

The fused edges (:mod:`autodeeplab.fast.fused_edges`) run one convolution per primitive for the E edges
that read a state, with the E filters stacked along the output channels. Gathered with ``torch.cat`` at
every call, that is one copy kernel per primitive and state in the forward, and in the backward the fused
gradient is cut into E slices that ``AccumulateGrad`` copies again where they are not laid out like their
parameter (E copies, each an allocation and a kernel).

:func:`flat_weight` keeps the E parameters as consecutive slices of one contiguous tensor instead (each
parameter's storage is its slice: ``param.data`` is a view), so the stacked filter is that tensor itself,
without a copy. The parameters stay ordinary parameters — the same names, shapes, values, ``state_dict``,
optimizers and checkpoints — and the arithmetic is unchanged, so the results are identical bit for bit
(tested). Anything that gives a parameter new storage (``.to()``, ``.double()``,
``load_state_dict(assign=True)``) is noticed at the next call, which lays the slices out again.

How the gradient gets to the parameters: the group's tensor is itself the leaf that the convolutions read
(it shares the parameters' storage), and once its gradient ``[Σ rows, *K]`` has been accumulated, a hook
hands each parameter its slice (a view; added in place when the parameter already has a gradient, as
``AccumulateGrad`` does). That is one ``AccumulateGrad`` per group instead of one per parameter and no
autograd function in between: −2 dispatches per parameter and step (~9.4k in a weight step of the
paper's supernet). What follows from it: the parameters themselves are not in the autograd graph, so
``torch.autograd.grad(loss, params)`` and hooks registered on the parameters do not see these filters —
use ``flat_edge_weights=False`` for that; ``.backward()``, optimizers, clipping and the ranks' averaging
see ordinary ``.grad`` tensors.

Slices along the first dimension are contiguous, which the fused SGD kernel needs (it mis-updates strided
views): every layout here is a concatenation along dim 0. One difference from ``torch.cat``: the convolutions
keep the parameters' storage itself for their backward, so a weight changed in place between a forward and
its backward would not be caught by autograd's version check (the steps never do that: the optimizer steps
after the backward).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import nn


class _Flat:
    """One group: the contiguous tensor, a no-gradient alias of it, and where its parameters' data must be
    for it to hold them."""

    __slots__ = ("fused", "frozen", "addresses", "params", "rows", "__weakref__")

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        # normal tensors even when first called under inference mode (the parameters train later), in
        # shared memory when the parameters were (``share_memory()``)
        with torch.inference_mode(False), torch.no_grad():
            fused = torch.cat([p.detach() for p in params])
            if all(p.is_shared() for p in params):
                fused.share_memory_()
        start = 0
        for p in params:
            rows = p.shape[0]
            p.data = fused[start : start + rows]  # a view: the parameter now lives in ``fused``
            start += rows
        self.addresses = [p.data_ptr() for p in params]
        self.params = list(params)
        self.rows = [p.shape[0] for p in params]
        self.frozen = fused.detach()  # what a call that needs no gradient reads: no graph, no hook
        self.fused = fused.requires_grad_(True)  # the leaf of the calls that train the filters
        # The hook finds the group through a weak reference: a strong one would close a cycle
        # (parameter → group → tensor → hook → parameters) through the hook, which lives in C++ where the
        # garbage collector cannot see it, and no parameter would ever be freed. The cycle through the
        # group's ``params`` is Python's and is collected.
        self.fused.register_post_accumulate_grad_hook(_handing_out(weakref.ref(self)))

    def holds(self, params: Sequence[nn.Parameter]) -> bool:
        """Whether ``params`` are still this group's slices. An address inside ``fused`` (alive as long as
        this group) can only be its slice, so the addresses decide (no weak reference to a parameter is
        kept: ``torch.utils.swap_tensors`` refuses tensors that have one)."""
        if len(params) != len(self.addresses):
            return False
        return all(p.data_ptr() == address for p, address in zip(params, self.addresses, strict=True))

    def __reduce__(self):
        # a copy or a pickle of a parameter drops its group (the copy has storage of its own anyway):
        # nothing of it is pickled, not the hook, not the parameters
        return (_dropped, ())


def _dropped() -> None:
    return None


def _handing_out(group: weakref.ref):
    """The hook that gives each parameter of ``group`` its slice of the group's accumulated gradient
    ``[Σ rows, *K]`` and clears the group's, so that the next backward starts from nothing, like a
    parameter after ``zero_grad``. A frozen parameter of a partly frozen group gets nothing."""

    def hand_out(fused: torch.Tensor) -> None:
        flat = group()
        grad, fused.grad = fused.grad, None
        if flat is None:  # the group is gone (its parameters with it): nobody to hand out to
            return
        for p, piece in zip(flat.params, grad.split(flat.rows), strict=True):
            if not p.requires_grad:
                continue
            if p.grad is None:  # contiguous, laid out like the parameter: kept as it is, no copy
                p.grad = piece
            else:
                p.grad.add_(piece)

    return hand_out


_ATTRIBUTE = "_autodeeplab_flat"
"""Where the group lives: an attribute of its first parameter (it goes with the parameter; a copy of the
parameter has none, or one whose ``holds`` fails)."""


def flat_weights(groups: Sequence[Sequence[nn.Parameter]]) -> list[torch.Tensor]:
    """For each group, ``torch.cat(group)`` along dim 0 (``[Σ rows, *K]``), equal in value and gradient,
    without copying: each group's parameters are (made) consecutive slices of one tensor, which is returned
    (the parameters get their gradients from it, see the module docstring). A group of one parameter: the
    parameter itself."""
    out: list[torch.Tensor] = []
    grad = torch.is_grad_enabled()
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        flat = getattr(group[0], _ATTRIBUTE, None)
        if flat is None or not flat.holds(group):
            flat = _Flat(group)
            setattr(group[0], _ATTRIBUTE, flat)
        trains = grad and any(p.requires_grad for p in group)
        out.append(flat.fused if trains else flat.frozen)
    return out


def flat_weight(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """:func:`flat_weights` of one group."""
    return flat_weights([params])[0]
