"""Depthwise convolutions (stride 1) with a cheaper backward than the convolution library's on CPU.

The fused separable convs (:mod:`autodeeplab.fast.fused_edges`) run depthwise convolutions of E edges'
filters on the same C channels: either on the input repeated once per edge (``repeat_separable_input``,
multiplier 1: :func:`repeated_depthwise_convs`), or with a channel multiplier M = E, E outputs per input
channel (:func:`depthwise_conv`). The second depthwise conv of a separable conv has multiplier 1.

The convolution library's backward is slow on the CPU for both; :func:`depthwise_conv` (from
:mod:`autodeeplab.ops.depthwise`, which the found networks share) computes the gradients as forward
convolutions, and the repeated input's functions here do the same for their edges
(:func:`autodeeplab.ops.depthwise.backward_as_forward_convs`). Equal to the library's result up to float
rounding (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.fast.conv_grads import convs_backward
from autodeeplab.fast.strided import copy_in_order, layout_strides
from autodeeplab.ops.autocast import apply_like_autocast_conv
from autodeeplab.ops.primitives import conv_function


def _edge_view(t: torch.Tensor, k: int, edges: int, c: int) -> torch.Tensor:
    """``t`` ``[N, K·E·C, *S]`` as ``[N, K, E, C, *S]`` (``[N, E, C, *S]`` for K = 1): one ``as_strided`` of
    ``t``'s own strides, whatever its layout."""
    s = t.stride()
    groups = ((k,), (edges * c * s[1],)) if k > 1 else ((), ())
    size = (t.shape[0], *groups[0], edges, c, *t.shape[2:])
    return t.as_strided(size, (s[0], *groups[1], c * s[1], *s[1:]))


def repeat_edge_major(x: torch.Tensor, edges: int, channel_groups: int = 1) -> torch.Tensor:
    """``[N, C, *S]`` → ``[N, E·C, *S]``, channel i·C + c a copy of channel c: one copy, channels-last for a
    channels-last image batch and contiguous otherwise (volumes included, see
    :func:`autodeeplab.ops.primitives.depthwise_input`). With ``channel_groups`` K, ``x`` ``[N, K·C, *S]``
    holds K inputs side by side and each is repeated in place: ``[N, K·E·C, *S]``, channel (k·E + i)·C + c
    a copy of channel k·C + c. Two dispatches (:func:`autodeeplab.fast.strided.copy_in_order`); none for
    E = 1 when ``x`` is laid out so already (a state that one edge reads): ``x`` itself."""
    k = channel_groups
    c = x.shape[1] // k
    layout = _repeat_layout(x)
    if edges == 1 and x.stride() == layout_strides(x.shape, layout):  # one copy of each channel: x itself
        return x
    # x as [N, K, E, C, *S] with stride 0 over E (dims 0, 1, 2, 3, 4…), in the result's memory order
    s, spatial = x.stride(), list(range(4, x.dim() + 2))
    size = (x.shape[0], k, edges, c, *x.shape[2:])
    stride = (s[0], c * s[1], 0, s[1], *s[2:])
    order = [0, *spatial, 1, 2, 3] if layout != torch.contiguous_format else [0, 1, 2, 3, *spatial]
    shape = (x.shape[0], edges * x.shape[1], *x.shape[2:])
    return copy_in_order(x, size, stride, order, shape, layout)


def _repeat_layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last for a channels-last image batch (4 dims), else contiguous."""
    image = x.dim() == 4 and not x.is_contiguous()
    return (
        torch.channels_last
        if image and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


def _stand_in(x: torch.Tensor, edges: int, grads) -> torch.Tensor:
    """What an input-only gradient of the repeated depthwise convs reads of their input: the shape and layout
    of :func:`repeat_edge_major`'s result, not its values. An output gradient of that shape and those
    strides (a stride-1 "same" conv's) stands in, with no allocation; else an uninitialised tensor."""
    shape = (x.shape[0], edges * x.shape[1], *x.shape[2:])
    layout = _repeat_layout(x)
    strides = layout_strides(shape, layout)
    for grad in grads:
        if grad is not None and grad.shape == shape and grad.stride() == strides and grad.dtype == x.dtype:
            return grad
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


def _sum_edge_copies(grad: torch.Tensor, k: int, edges: int) -> torch.Tensor:
    """The backward of :func:`repeat_edge_major`: ``[N, K·E·C, *S]`` → ``[N, K·C, *S]``, each channel's E
    copies' gradients summed (in ``grad``'s layout)."""
    c = grad.shape[1] // (k * edges)
    if edges == 1:  # one copy: its gradient is the input's
        return grad
    if k == 1:  # [N, E, C, *S] summed over E is the result's shape already (no flatten)
        return _edge_view(grad, k, edges, c).sum(1)
    return _edge_view(grad, k, edges, c).sum(2).flatten(1, 2)


class _RepeatedDepthwise(torch.autograd.Function):
    """Depthwise convs of ``x`` ``[N, K·C, *S]`` repeated E times edge-major within each of its K channel
    groups (:func:`repeat_edge_major`), one per filter tensor ``[K·E·C, 1, *k]`` (each with its own stride,
    padding and dilation): the repeat is made once for all of them. Keeps ``x`` for the backward, not its
    E-fold repeat (which autograd would keep as the convs' input, E activations more per call): the
    backward repeats it again, once, and only when a filter gradient needs its values."""

    @staticmethod
    def forward(ctx, x, channel_groups: int, convs: tuple, forward_convs: bool, *weights):
        ctx.save_for_backward(x, *weights)
        ctx.k, ctx.convs, ctx.forward_convs = channel_groups, convs, forward_convs
        repeated = repeat_edge_major(x, weights[0].shape[0] // x.shape[1], channel_groups)
        conv = conv_function(x.dim() - 2)
        pairs = zip(weights, convs, strict=True)
        return tuple(conv(repeated, w, None, *arguments, w.shape[0]) for w, arguments in pairs)

    @staticmethod
    def backward(ctx, *grads):
        x, *weights = ctx.saved_tensors
        k, needs = ctx.k, ctx.needs_input_grad
        edges = weights[0].shape[0] // x.shape[1]
        # the filters' gradients read the repeated input; the input's gradient needs only its shape (an
        # architecture step's frozen filters: no copy)
        repeated = repeat_edge_major(x, edges, k) if any(needs[4:]) else _stand_in(x, edges, grads)
        grad_repeated, grad_weights = convs_backward(
            grads, repeated, weights, ctx.convs, True, needs[0], needs[4:], ctx.forward_convs
        )
        grad_x = None
        if grad_repeated is not None:  # the repeat's backward: the E copies' gradients summed
            grad_x = _sum_edge_copies(grad_repeated, k, edges)
        return grad_x, None, None, None, *grad_weights


def repeated_depthwise_convs(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    likes: list[nn.Module],
    channel_groups: int = 1,
    forward_convs: bool = False,
) -> tuple[torch.Tensor, ...]:
    """:func:`repeated_depthwise_conv` of one ``x`` with each of ``weights`` (``likes[i]``'s stride, padding
    and dilation), the repeat made once for all of them. ``forward_convs``: the backward as forward
    convolutions where that is faster (:func:`autodeeplab.ops.depthwise.backward_as_forward_convs`)."""
    convs = tuple((tuple(m.stride), tuple(m.padding), tuple(m.dilation)) for m in likes)
    return apply_like_autocast_conv(_RepeatedDepthwise, x, channel_groups, convs, forward_convs, *weights)


def repeated_depthwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    channel_groups: int = 1,
    forward_convs: bool = False,
) -> torch.Tensor:
    """Depthwise conv of ``x`` ``[N, C, *S]`` repeated E times edge-major with ``weight`` ``[E·C, 1, *k]``
    (edge i's filters at rows i·C..i·C+C) → ``[N, E·C, *S']``, without keeping the repeat for the backward.
    With ``channel_groups`` K: ``x`` ``[N, K·C, *S]``, ``weight`` ``[K·E·C, 1, *k]`` → ``[N, K·E·C, *S']``,
    each group repeated in place (:func:`repeat_edge_major`)."""
    convs = ((tuple(stride), tuple(padding), tuple(dilation)),)
    return apply_like_autocast_conv(_RepeatedDepthwise, x, channel_groups, convs, forward_convs, weight)[0]
