"""1×1 convolutions of channels-last activations as matrix products over the channel axis (exact).

A 1×1 convolution with stride 1 and no padding multiplies every pixel's channel vector by the same
``[O, C]`` matrix. A channels-last ``[N, C, *S]`` tensor is, in memory, a ``[N·prod(S), C]`` matrix,
so the convolution is one ``F.linear`` on a permuted view, and its backward two matrix products. For
the small activations of the search supernet that skips most of oneDNN's per-call cost: measured on
2 CPU cores, a 40→40-channel 1×1 conv on ``[6, 40, 33, 33]`` took 1.22 ms forward + backward as a
convolution and 0.38 ms as a matmul (``benchmarks/README.md``). The result is channels-last, like the
convolution's, and equal to it up to float rounding (the same products, summed in another order).

A grouped 1×1 convolution (G groups) is a batched product: ``[G, N·prod(S), C/G] @ [G, C/G, O/G]``.
K inputs side by side in the channels (``[N, K·C, *S]``, :mod:`autodeeplab.fast.channel_groups`) that go
through the same convolution are, in memory, a ``[N·prod(S)·K, C]`` matrix: the same products with K times
the rows, no copy of the weight.

Tensors that are not channels-last (CUDA fp32, volumes, the reference path) keep the convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.ops.autocast import apply_like_autocast_conv
from autodeeplab.ops.primitives import CHANNELS_LAST, conv_function


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[N, C, *S]`` (2 or 3 spatial axes) is laid out channels-last in memory."""
    layout = CHANNELS_LAST.get(x.dim())
    return layout is not None and x.is_contiguous(memory_format=layout)


def is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 1×1 convolution with stride 1 and no padding (any groups, any bias)."""
    return (
        isinstance(conv, nn.modules.conv._ConvNd)
        and not conv.transposed
        and all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and all(p == 0 for p in conv.padding)
        and conv.padding_mode == "zeros"
    )


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, *S]`` → the ``[N, *S, C]`` view (contiguous when ``x`` is channels-last)."""
    return x.permute(0, *range(2, x.dim()), 1)


def from_rows(y: torch.Tensor) -> torch.Tensor:
    """``[N, *S, C]`` → the ``[N, C, *S]`` view (channels-last when ``y`` is contiguous)."""
    return y.permute(0, y.dim() - 1, *range(1, y.dim() - 1))


def _matrix(t: torch.Tensor, k: int = 1, transposed: bool = False) -> torch.Tensor:
    """A channels-last ``[N, K·C, *S]`` tensor as the ``[N·prod(S)·K, C]`` matrix it is in memory (its
    transpose ``[C, N·prod(S)·K]`` when ``transposed``): one ``as_strided`` (a permute and a reshape would
    be two dispatches, and the products below take views)."""
    c = t.shape[1] // k
    if transposed:
        return t.as_strided((c, t.numel() // c), (1, c))
    return t.as_strided((t.numel() // c, c), (c, 1))


def _channels_last_like(t: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty channels-last ``[N, channels, *S]`` tensor with ``t``'s batch, spatial size, dtype, device."""
    shape = (t.shape[0], channels, *t.shape[2:])
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=CHANNELS_LAST[t.dim()])


def _by_group(t: torch.Tensor, k: int, groups: int, transposed: bool = False) -> torch.Tensor:
    """A channels-last ``[N, K·G·I, *S]`` tensor as the ``[G, M, I]`` view of its G channel groups' rows
    (M = N·prod(S)·K), or ``[G, I, M]`` when ``transposed``: one ``as_strided``."""
    i = t.shape[1] // (k * groups)
    m = t.numel() // (groups * i)
    if transposed:
        return t.as_strided((groups, i, m), (i, 1, groups * i))
    return t.as_strided((groups, m, i), (i, groups * i, 1))


def _group_filters(weight: torch.Tensor, groups: int, transposed: bool) -> torch.Tensor:
    """A grouped 1×1 conv's filters ``[O, C/G, 1…]`` as G matrices ``[O/G, C/G]`` (``[C/G, O/G]`` when
    ``transposed``): one ``as_strided`` of the filters' own strides."""
    per, c = weight.shape[0] // groups, weight.shape[1]
    s0, s1 = weight.stride(0), weight.stride(1)
    if transposed:
        return weight.as_strided((groups, c, per), (per * s0, s1, s0))
    return weight.as_strided((groups, per, c), (per * s0, s0, s1))


class _PointwiseConv(torch.autograd.Function):
    """The matmul form with its own backward, so that autograd keeps ``x``'s storage (as the matrix view
    the products read, ``[M, C]`` or ``[G, M, C/G]``), as the convolution keeps ``x``: the saved-activation
    accounting sees the same storage either way, and the backward needs no view of its own."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, k: int):
        rows = _matrix(x, k) if groups == 1 else _by_group(x, k, groups)
        # the filters as the products read them, [C, O] (per group [G, C/G, O/G]): the backward reads
        # the same view (see there), so it is made once
        mats = weight.t() if groups == 1 else _group_filters(weight, groups, transposed=True)
        ctx.save_for_backward(rows, mats)
        ctx.groups, ctx.k, ctx.has_bias, ctx.shape = groups, k, bias is not None, x.shape
        ctx.weight_shape = weight.shape
        # the result is its own channels-last tensor, not a view of a [N, *S, O] one: what later
        # saves it for a backward sees an [N, O, *S] tensor, as after a convolution
        out = _channels_last_like(x, k * weight.shape[0])
        if groups == 1:
            torch.mm(rows, mats, out=_matrix(out, k))
        else:  # the bmm writes into out's [G, M, O/G] view
            torch.bmm(rows, mats, out=_by_group(out, k, groups))
        if bias is not None:
            _matrix(out, k).add_(bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, mats = ctx.saved_tensors
        groups, k = ctx.groups, ctx.k
        if not is_channels_last(grad):  # a gradient may come in another layout
            grad = grad.contiguous(memory_format=CHANNELS_LAST[grad.dim()])
        # Both products read the gradient transposed, gᵀ [O, M] (per group [G, O/G, M]): the input's is
        # computed as its transpose, dL/dxᵀ = Wᵀ · gᵀ, written into the transposed view of a channels-last
        # tensor. The same dot products as g · W (bit for bit on this CPU's BLAS, tested), one view of g
        # instead of two and none of the filters; BLAS takes either orientation of every operand and of
        # the result (cuBLAS too, by swapping the operands, as torch's CUDA bmm/mm read; not run on a GPU
        # here), so nothing is copied in fp32.
        gt = _matrix(grad, k, transposed=True) if groups == 1 else _by_group(grad, k, groups, transposed=True)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _channels_last_like(grad, ctx.shape[1])
            if groups == 1:
                torch.mm(mats, gt, out=_matrix(grad_x, k, transposed=True))
            else:
                torch.bmm(mats, gt, out=_by_group(grad_x, k, groups, transposed=True))
        if ctx.needs_input_grad[1]:  # dL/dW = gᵀ · x (per group)
            grad_w = torch.mm(gt, rows) if groups == 1 else torch.bmm(gt, rows).view(ctx.weight_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _matrix(grad, k).sum(0)
        return grad_x, grad_w, grad_b, None, None


def pointwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    channel_groups: int = 1,
) -> torch.Tensor:
    """1×1 convolution of ``x`` ``[N, C, *S]`` with ``weight`` ``[O, C/groups, 1, ...]`` → ``[N, O, *S]``.

    A matmul when ``x`` is channels-last (the result is channels-last too), the convolution otherwise.
    Under autocast the operands are cast as autocast casts a convolution's. ``channel_groups`` K: ``x``
    ``[N, K·C, *S]`` holds K inputs side by side, each convolved with ``weight`` → ``[N, K·O, *S]``.
    """
    k = channel_groups
    if not is_channels_last(x):
        if k > 1:  # the same filters for every channel group: a grouped convolution of K copies
            weight = weight.repeat(k, *([1] * (weight.dim() - 1)))
            bias = bias.repeat(k) if bias is not None else None
        return conv_function(x.dim() - 2)(x, weight, bias, 1, 0, 1, groups * k)
    # grouped: the filters as they are (the function views them per group); else as the [O, C] matrix
    w = weight if groups > 1 else weight.reshape(weight.shape[0], -1)
    return apply_like_autocast_conv(_PointwiseConv, x, w, bias, groups, k)


def apply_conv(conv: nn.Module, x: torch.Tensor, *, pointwise_as_matmul: bool) -> torch.Tensor:
    """``conv(x)``, through :func:`pointwise_conv` when ``pointwise_as_matmul`` (the execution switch) and
    ``conv`` is a plain 1×1 conv."""
    if pointwise_as_matmul and is_pointwise(conv) and is_channels_last(x):
        return pointwise_conv(x, conv.weight, conv.bias, conv.groups)
    return conv(x)
