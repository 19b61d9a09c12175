"""1×1 convolutions of channels-last activations as matrix products over the channel axis (exact).

A 1×1 convolution with stride 1 and no padding multiplies every pixel's channel vector by the same
``[O, C]`` matrix. A channels-last ``[N, C, *S]`` tensor is, in memory, a ``[N·prod(S), C]`` matrix,
so the convolution is one ``F.linear`` on a permuted view, and its backward two matrix products. For
the small activations of the search supernet that skips most of oneDNN's per-call cost: measured on
2 CPU cores, a 40→40-channel 1×1 conv on ``[6, 40, 33, 33]`` took 1.22 ms forward + backward as a
convolution and 0.38 ms as a matmul (``benchmarks/README.md``). The result is channels-last, like the
convolution's, and equal to it up to float rounding (the same products, summed in another order).

A grouped 1×1 convolution (G groups) is a batched product: ``[G, N·prod(S), C/G] @ [G, C/G, O/G]``.

Tensors that are not channels-last (CUDA fp32, volumes, the reference path) keep the convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from autodeeplab.fast.precision import apply_like_autocast_conv
from autodeeplab.ops.primitives import conv_function

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[N, C, *S]`` (2 or 3 spatial axes) is laid out channels-last in memory."""
    layout = _CHANNELS_LAST.get(x.dim())
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


def _per_group(rows: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """``rows`` ``[..., G·K]`` times one ``[K, J]`` matrix per group (``mats`` ``[G, K, J]``) → ``[M, G, J]``
    (M = the leading axes flattened): the grouped 1×1 conv's forward and input gradient alike."""
    groups, k = mats.shape[0], mats.shape[1]
    return torch.bmm(rows.reshape(-1, groups, k).transpose(0, 1), mats).transpose(0, 1)


class _PointwiseConv(torch.autograd.Function):
    """The matmul form with its own backward, so that autograd keeps ``x`` itself (``[N, C, *S]``), as
    the convolution does: the saved-activation accounting sees the same tensors either way."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        # the result is its own channels-last tensor, not a view of a [N, *S, O] one: what later
        # saves it for a backward sees an [N, O, *S] tensor, as after a convolution
        layout = _CHANNELS_LAST[x.dim()]
        out = torch.empty(
            (x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=layout
        )
        rows = to_rows(out)  # [N, *S, O], contiguous
        if groups == 1:
            torch.matmul(to_rows(x), weight.t(), out=rows)
        else:  # weight [O, C/G] → per group [C/G, O/G]
            mats = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1]).transpose(1, 2)
            rows.view(-1, groups, weight.shape[0] // groups).copy_(_per_group(to_rows(x), mats))
        if bias is not None:
            rows.add_(bias)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        groups = ctx.groups
        g = to_rows(grad)  # [N, *S, O]
        out_channels, c_in = weight.shape[0], weight.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # dL/dx = g · W (per group)
            if groups == 1:
                grad_x = from_rows(torch.matmul(g, weight))
            else:  # per group through [O/G, C/G]
                mats = weight.reshape(groups, out_channels // groups, c_in)
                grad_x = from_rows(_per_group(g, mats).reshape(*g.shape[:-1], c_in * groups))
        if ctx.needs_input_grad[1]:  # dL/dW = gᵀ · x (per group)
            g2 = g.reshape(-1, out_channels)
            x2 = to_rows(x).reshape(-1, x.shape[1])
            if groups == 1:
                grad_w = g2.t().mm(x2)
            else:
                gg = g2.reshape(-1, groups, out_channels // groups).permute(1, 2, 0)  # [G, O/G, M]
                xg = x2.reshape(-1, groups, c_in).transpose(0, 1)  # [G, M, C/G]
                grad_w = torch.bmm(gg, xg).reshape(out_channels, c_in)
            grad_w = grad_w.reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.reshape(-1, out_channels).sum(0)
        return grad_x, grad_w, grad_b, None


def pointwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1
) -> torch.Tensor:
    """1×1 convolution of ``x`` ``[N, C, *S]`` with ``weight`` ``[O, C/groups, 1, ...]`` → ``[N, O, *S]``.

    A matmul when ``x`` is channels-last (the result is channels-last too), the convolution otherwise.
    Under autocast the operands are cast as autocast casts a convolution's.
    """
    if not is_channels_last(x):
        return conv_function(x.dim() - 2)(x, weight, bias, 1, 0, 1, groups)
    return apply_like_autocast_conv(_PointwiseConv, x, weight.reshape(weight.shape[0], -1), bias, groups)


def apply_conv(conv: nn.Module, x: torch.Tensor, *, pointwise_as_matmul: bool) -> torch.Tensor:
    """``conv(x)``, through :func:`pointwise_conv` when ``pointwise_as_matmul`` (the execution switch) and
    ``conv`` is a plain 1×1 conv."""
    if pointwise_as_matmul and is_pointwise(conv) and is_channels_last(x):
        return pointwise_conv(x, conv.weight, conv.bias, conv.groups)
    return conv(x)
