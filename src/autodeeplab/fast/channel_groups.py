"""A node's G incoming resolutions side by side in the channels, ``[N, G·C, *S]`` (issue 16, exact).

A node's cell runs on up to three inputs h^{l-1} (one per incoming resolution) with the same weights. Stacked
on the batch axis (``[G·N, C, *S]``, :mod:`autodeeplab.fast.grouped_bn`), every batch norm must normalise
each batch chunk on its own: G native calls, G chunk views, and a ``cat`` of their outputs (and the same
again in the backward), at every one of a cell's ~45 batch norms. Side by side in the channels instead
(group g's channel c is channel g·C + c), one native call normalises every group with its own statistics,
since batch statistics are per channel; the modules still record the G groups' statistics in group order.

The operations change as follows (each equal to G separate calls up to float rounding, tested):

- ReLU, pools, the identity: per channel, unchanged;
- a depthwise convolution: the filters repeated G times, G times the channels (a copy of the small
  filter tensor, summed back in the backward);
- a dense convolution (the atrous convs): on the groups moved to the batch axis and back (a copy of the
  input, shared by a state's convolutions, and one of each output: :func:`convs_on_the_batch_axis`), since
  a grouped convolution of repeated filters is 1.1–4× slower on CPU (oneDNN, measured at the search's
  sizes);
- a 1×1 convolution of channels-last activations as a matmul: the G groups are G times the rows of the
  same matrix product, with no copy (:func:`autodeeplab.fast.pointwise.pointwise_conv`).

Channels-last activations keep the layout: in memory ``[N, *S, G, C]``, so that a fused edge output
``[N, *S, G, E, C]`` (the edges' channels within each group) is summed per edge as a strided view.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.fast.conv_grads import convs_backward
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.pointwise import is_channels_last, is_pointwise, pointwise_conv
from autodeeplab.fast.strided import copy_in_order
from autodeeplab.ops.autocast import apply_like_autocast_conv
from autodeeplab.ops.primitives import conv_function, memory_format_of


def uses_channel_groups(execution: ExecutionConfig, partial_channels: int, groups: int) -> bool:
    """Whether a node with ``groups`` incoming resolutions runs its cell with them side by side in the
    channels: ``groups_in_channels`` with the fused, batched cell path whose separable convs repeat their
    input (``repeat_separable_input``), and no partial channels (whose per-edge channel split and shuffle
    would cut across the groups)."""
    return (
        groups > 1
        and execution.groups_in_channels
        and execution.batch_node_inputs
        and execution.fuse_edges
        and execution.repeat_separable_input
        and partial_channels == 1
    )


def _grouped_geometry(t: torch.Tensor, k: int, batch_major: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The size and strides of ``t`` seen as ``[N, K, C, *S]``, its K groups: ``t`` ``[N, K·C, *S]``
    (channel groups), or with ``batch_major`` ``[K·N, C, *S]`` (batch groups); whatever the layout."""
    if batch_major:
        n, c = t.shape[0] // k, t.shape[1]
        strides = (t.stride(0), n * t.stride(0), *t.stride()[1:])
    else:
        n, c = t.shape[0], t.shape[1] // k
        strides = (t.stride(0), c * t.stride(1), *t.stride()[1:])
    return (n, k, c, *t.shape[2:]), strides


def _regroup(x: torch.Tensor, k: int, to_batch_axis: bool, values: bool = True) -> torch.Tensor:
    """The copy between the two layouts of K groups, into a new tensor of ``x``'s memory format (without
    ``values``: that tensor uninitialised, for a convolution backward that needs only its shape)."""
    if to_batch_axis:
        shape = (k * x.shape[0], x.shape[1] // k, *x.shape[2:])
    else:
        shape = (x.shape[0] // k, k * x.shape[1], *x.shape[2:])
    layout = memory_format_of(x)
    if not values:
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    # x's groups as [N, K, C, *S] (dims 0, 1, 2, 3…), listed in the new tensor's memory order
    size, stride = _grouped_geometry(x, k, not to_batch_axis)
    spatial = list(range(3, x.dim() + 1))
    if to_batch_axis:  # [K·N, C, *S]: K outermost
        order = [1, 0, *spatial, 2] if layout != torch.contiguous_format else [1, 0, 2, *spatial]
    else:  # [N, K·C, *S]
        order = [0, *spatial, 1, 2] if layout != torch.contiguous_format else [0, 1, 2, *spatial]
    return copy_in_order(x, size, stride, order, shape, layout)


class _ConvsOnTheBatchAxis(torch.autograd.Function):
    """Dense convolutions of one input's K channel groups, each on the groups moved to the batch axis and
    its result moved back: ``x`` ``[N, K·C, *S]`` → one ``[N, K·O_i, *S']`` per filter tensor
    ``[O_i, C, *k]``.

    Keeps ``x`` itself for the backward (saved anyway by the ReLU that made it and the separable convs), not
    its batch-axis copy (one more activation per state, 2% of a search's at 321²): the backward makes the
    copy again, once for all the convolutions."""

    @staticmethod
    def forward(ctx, x, k: int, convs: tuple, *weights):  # noqa: D102
        ctx.save_for_backward(x, *weights)
        ctx.k, ctx.convs = k, convs
        on_batch, conv = _regroup(x, k, True), conv_function(x.dim() - 2)
        return tuple(
            _regroup(conv(on_batch, w, None, *arguments, 1), k, False)
            for w, arguments in zip(weights, convs, strict=True)
        )

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        x, *weights = ctx.saved_tensors
        k, needs = ctx.k, ctx.needs_input_grad
        # the filters' gradients read x on the batch axis; x's gradient needs only its shape (an
        # architecture step's frozen filters: no copy)
        on_batch = _regroup(x, k, True, values=any(needs[3:]))
        grads = [None if grad is None else _regroup(grad, k, True) for grad in grads]
        grad_on_batch, grad_weights = convs_backward(
            grads, on_batch, weights, ctx.convs, False, needs[0], needs[3:]
        )
        grad_x = _regroup(grad_on_batch, k, False) if grad_on_batch is not None else None
        return grad_x, None, None, *grad_weights


def convs_on_the_batch_axis(
    x: torch.Tensor, channel_groups: int, weights: list[torch.Tensor], likes: list[nn.Module]
) -> tuple[torch.Tensor, ...]:
    """Each dense convolution ``likes[i]`` (its stride, padding, dilation) with ``weights[i]``
    ``[O_i, C, *k]`` of every channel group of ``x`` ``[N, K·C, *S]`` → ``[N, K·O_i, *S']`` each: through the
    batch axis (see the module docstring), keeping only ``x`` for the backward."""
    convs = tuple((tuple(m.stride), tuple(m.padding), tuple(m.dilation)) for m in likes)
    return apply_like_autocast_conv(_ConvsOnTheBatchAxis, x, channel_groups, convs, *weights)


def repeat_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[O, *rest]`` → ``[G·O, *rest]``: the same filters for each of G channel groups."""
    return weight.repeat(groups, *([1] * (weight.dim() - 1))) if groups > 1 else weight


def shared_module_conv(
    conv: nn.Module, x: torch.Tensor, channel_groups: int, pointwise_as_matmul: bool
) -> torch.Tensor:
    """``conv`` (an ``nn.Conv*d``) applied to each of the K channel groups of ``x`` ``[N, K·C, *S]`` →
    ``[N, K·O, *S']``: a 1×1 conv of channels-last ``x`` as one matmul over K times the rows
    (``pointwise_as_matmul``), any other as a grouped convolution of the filters repeated K times."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        what = f"{type(conv).__name__} with padding {conv.padding!r}"
        raise ValueError(f"channel groups: {what} is not supported")
    k = channel_groups
    if pointwise_as_matmul and is_pointwise(conv) and is_channels_last(x):
        return pointwise_conv(x, conv.weight, conv.bias, conv.groups, k)
    bias = conv.bias.repeat(k) if conv.bias is not None else None
    weight, convolve = repeat_filters(conv.weight, k), conv_function(x.dim() - 2)
    return convolve(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups * k)
