"""The backward of several convolutions of one input, for the fast path's autograd functions that keep
that input themselves (:mod:`autodeeplab.fast.depthwise`, :mod:`autodeeplab.fast.channel_groups`): the
library's, or for a depthwise convolution on the CPU the one as forward convolutions of
:mod:`autodeeplab.ops.depthwise`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autodeeplab.ops.depthwise import backward_as_forward_convs, depthwise_backward, library_backward


def convs_backward(
    grads: Sequence[torch.Tensor | None],
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    convs: Sequence[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    depthwise: bool,
    needs_x: bool,
    needs_weights: Sequence[bool],
    forward_convs: bool = False,
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Convolution ``i`` read ``x`` ``[N, C, *S]`` with ``weights[i]`` and ``convs[i]`` (stride, padding,
    dilation), one group or ``depthwise``; ``grads[i]``: its output's gradient, or None (unused).

    Returns ``x``'s gradient summed over the convolutions (None when not ``needs_x`` or none was used) and
    each filter's gradient (None where not needed). With no filter gradient needed, ``x`` may be an
    uninitialised tensor of the right shape and layout: an input gradient reads no input value.
    ``forward_convs``: a depthwise convolution for which :func:`backward_as_forward_convs` holds gets its
    gradients from :func:`depthwise_backward`.
    """
    grad_x, grad_weights = None, []
    parts = zip(grads, weights, convs, needs_weights, strict=True)
    for grad, w, (stride, padding, dilation), needs_w in parts:
        if grad is None:
            grad_weights.append(None)
            continue
        if depthwise and forward_convs and backward_as_forward_convs(x, w, stride, padding, dilation):
            grad_in, grad_w = depthwise_backward(grad, x, w, padding, dilation, needs_x, needs_w)
        else:
            grad_in, grad_w = library_backward(
                grad, x, w, stride, padding, dilation, depthwise, needs_x, needs_w
            )
        grad_weights.append(grad_w)
        if grad_in is not None:
            grad_x = grad_in if grad_x is None else grad_x.add_(grad_in)
    return grad_x, grad_weights
