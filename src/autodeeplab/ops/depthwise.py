"""Depthwise convolutions whose backward is made of forward convolutions, on the CPU.

On the CPU (oneDNN, torch 2.13) a depthwise convolution's own backward is far slower than its forward
except for small 2D filters: measured on one core, the filter gradient of a 5×5 depthwise conv of
``[2, 640, 5, 5]`` takes 1.0 ms against 0.06 ms for the forward, ``[2, 80, 33, 33]`` 1.2 ms; volumes
5–20× slower still (``benchmarks/README.md``). Both gradients of a stride-1 "same" depthwise conv are
forward depthwise convs (:func:`depthwise_backward`):

- the input gradient is the transposed convolution, which at stride 1 with "same" padding is the
  convolution of the output gradient with the filters flipped, the same padding and dilation;
- the filter gradient ``dW[c, t] = Σ_{n,s} g[n, c, s] · x_pad[n, c, s + d·t]`` is a convolution of the
  input with the output gradient as the filter, stride d, summed over the batch: for images, one more
  spatial axis carries the batch (``[1, C, N, H, W]`` with an ``N × H × W`` filter, a view of either
  layout), for volumes the batch joins the channels (``[1, N·C, D, H, W]``) and the N results are summed.

With a channel multiplier M > 1 (the search's fused separable convs) the input gradient is the flipped
filters' conv whose M outputs per input channel are summed; the library's is slow there too (``[6, 8, 33,
33]`` → 40 channels, 5×5: 0.59 ms against 0.19 ms for the forward, 2 cores).

Used by the search supernet's fast path (:mod:`autodeeplab.fast.depthwise`) and by the found networks'
separable convs (:func:`cheap_depthwise_backward`). Equal to the library's backward up to float rounding
(the same products summed in another order, tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.ops.autocast import apply_like_autocast_conv
from autodeeplab.ops.primitives import (
    CroppedConv1d,
    CroppedConv2d,
    CroppedConv3d,
    conv_function,
    depthwise_input,
)


def library_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    depthwise: bool,
    needs_x: bool,
    needs_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The convolution library's input and filter gradients (None where not needed) of a convolution of
    ``x`` with ``w`` (one group, or ``depthwise``: a group per input channel)."""
    grad_in, grad_w, _ = torch.ops.aten.convolution_backward(
        grad,
        x,
        w,
        None,
        list(stride),
        list(padding),
        list(dilation),
        False,
        [0] * (x.dim() - 2),
        x.shape[1] if depthwise else 1,
        [needs_x, needs_w, False],
    )
    return grad_in, grad_w


def backward_as_forward_convs(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> bool:
    """Whether the depthwise convolution of ``x`` ``[N, C, *S]`` with ``weight`` ``[C, 1, *k]`` (multiplier
    1) gets its gradients from :func:`depthwise_backward`: on the CPU, stride 1 with "same" padding, for a
    volume, or filters of more than 3 taps a side, or dilated ones (measured: the library's backward is
    as fast for 2D filters of at most 3×3 undilated)."""
    kernel = weight.shape[2:]
    if x.device.type != "cpu" or weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        return False
    if any(s != 1 for s in stride) or not same_padding(kernel, padding, dilation):
        return False
    return _input_gradient_as_conv(x, dilation) or any(k > 3 for k in kernel)


def _input_gradient_as_conv(x: torch.Tensor, dilation: Sequence[int]) -> bool:
    """Whether the input gradient is the flipped-filter conv: for volumes and dilated filters. An undilated
    image's is as fast from the library (0.08 against 0.06 ms for 5×5, ``[2, 640, 5, 5]``) in one
    dispatch, where the flip and the conv are two."""
    return x.dim() == 5 or any(d != 1 for d in dilation)


def same_padding(kernel: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> bool:
    """Whether a stride-1 convolution's output has its input's size, centred (d·(k − 1) = 2p a side)."""
    return all(d * (k - 1) == 2 * p for k, p, d in zip(kernel, padding, dilation, strict=True))


def depthwise_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: Sequence[int],
    dilation: Sequence[int],
    needs_x: bool,
    needs_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input and filter gradients (None where not needed) of the stride-1 "same" depthwise conv of
    ``x`` ``[N, C, *S]`` with ``weight`` ``[C, 1, *k]``, from its output's gradient ``grad`` ``[N, C, *S]``:
    the filter gradient as a forward convolution, the input gradient too for volumes and dilated filters,
    else from the library (see the module docstring). The input gradient reads no value of ``x``."""
    spatial, channels = x.dim() - 2, x.shape[1]
    grad_x = grad_w = None
    if needs_x and _input_gradient_as_conv(x, dilation):
        flipped = weight.flip(tuple(range(2, 2 + spatial)))
        grad_x = conv_function(spatial)(grad, flipped, None, 1, padding, dilation, channels)
    elif needs_x:
        stride = (1,) * spatial
        grad_x, _ = library_backward(grad, x, weight, stride, padding, dilation, True, True, False)
    if needs_w:
        grad_w = _filter_gradient(grad, x, weight.shape, padding, dilation)
    return grad_x, grad_w


def _filter_gradient(grad, x, shape, padding, dilation) -> torch.Tensor:
    """``dW`` ``[C, 1, *k]`` of a stride-1 depthwise conv: ``x`` convolved with ``grad`` as the filters."""
    n, channels = x.shape[:2]
    if x.dim() == 5:  # a volume: the batch joins the channels, the N per-sample results summed
        image = x.contiguous().view(1, n * channels, *x.shape[2:])
        filters = grad.contiguous().view(n * channels, 1, *grad.shape[2:])
        per_sample = conv_function(3)(image, filters, None, tuple(dilation), tuple(padding), 1, n * channels)
        return per_sample.view(n, channels, *shape[2:]).sum(0).unsqueeze(1)
    # an image (or a sequence): the batch as a leading spatial axis, covered whole by the filter. Views of
    # either layout (channels-last [N, H, W, C] is [1, C, N, H, W] channels-last-3d); F.conv3d directly:
    # torch 2.13's depthwise bf16 bug is in the backward of channels-last-3d inputs, not the forward.
    image = x.as_strided(
        (1, channels, n, *x.shape[2:]), (0, x.stride(1), x.stride(0), *x.stride()[2:])
    )  # [1, C, N, *S]
    g = grad.stride()
    filters = grad.as_strided((channels, 1, n, *grad.shape[2:]), (g[1], 0, g[0], *g[2:]))  # [C, 1, N, *S]
    convolve = F.conv3d if x.dim() == 4 else F.conv2d
    out = convolve(image, filters, None, (1, *dilation), (0, *padding), 1, channels)  # [1, C, 1, *k]
    return out.view(shape)


class _DepthwiseConv(torch.autograd.Function):
    """A stride-1 "same" depthwise conv of ``x`` ``[N, C, *S]`` with ``weight`` ``[C·M, 1, *k]`` whose
    backward avoids the library's slow parts (see the module docstring): with M = 1 both gradients from
    :func:`depthwise_backward`; with M > 1 the input gradient a flipped-filter
    conv whose M outputs per channel are summed, the filter gradient the library's."""

    @staticmethod
    def forward(ctx, x, weight, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return conv_function(x.dim() - 2)(x, weight, None, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs, padding, dilation = ctx.needs_input_grad, ctx.padding, ctx.dilation
        channels, spatial = x.shape[1], x.dim() - 2
        if weight.shape[0] == channels:
            grad_x, grad_w = depthwise_backward(grad, x, weight, padding, dilation, needs[0], needs[1])
            return grad_x, grad_w, None, None
        grad_x = grad_w = None
        if needs[0]:
            flipped = weight.flip(tuple(range(2, 2 + spatial)))
            per_filter = conv_function(spatial)(grad, flipped, None, 1, padding, dilation, weight.shape[0])
            grad_x = per_filter.unflatten(1, (channels, weight.shape[0] // channels)).sum(2)
        if needs[1]:
            stride = (1,) * spatial
            _, grad_w = library_backward(grad, x, weight, stride, padding, dilation, True, False, True)
        return grad_x, grad_w, None, None


def depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, ...], dilation: tuple[int, ...]
) -> torch.Tensor:
    """Stride-1 depthwise convolution: ``x`` ``[N, C, *S]``, ``weight`` ``[C·M, 1, *k]`` → ``[N, C·M, *S]``,
    with the cheaper backward where one applies (see the module docstring); otherwise the plain
    convolution."""
    kernel = tuple(weight.shape[2:])
    x = depthwise_input(x, x.shape[1])  # what the backward's convolutions read, too
    padding, dilation = tuple(padding), tuple(dilation)
    if weight.shape[0] == x.shape[1]:
        cheaper = backward_as_forward_convs(x, weight, (1,) * len(kernel), padding, dilation)
    else:
        cheaper = same_padding(kernel, padding, dilation)
    if cheaper:
        return apply_like_autocast_conv(_DepthwiseConv, x, weight, padding, dilation)
    return conv_function(x.dim() - 2)(x, weight, None, 1, padding, dilation, x.shape[1])


class _CheaperBackward:
    """A depthwise (one filter per channel), stride-1, bias-free convolution that trains through
    :func:`depthwise_conv`."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        # the custom backward only where a backward will run; not under torch.func's transforms (the
        # autograd function defines no jvp or vmap rule) nor for a stride changed after the swap
        if (
            bias is None
            and torch.is_grad_enabled()
            and (input.requires_grad or weight.requires_grad)
            and all(s == 1 for s in self.stride)  # type: ignore[attr-defined]
            and not _functorch_active()
        ):
            cropped = self._cropped(input, weight)  # type: ignore[attr-defined]
            if cropped is not None:  # a zero-padded "same" convolution, not being exported
                weight, padding = cropped
                return depthwise_conv(input, weight, padding, tuple(self.dilation))  # type: ignore[attr-defined]
        return super()._conv_forward(input, weight, bias)  # type: ignore[misc]


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vjp, jvp, vmap) is running."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


class DepthwiseConv1d(_CheaperBackward, CroppedConv1d):
    """:class:`CroppedConv1d`, depthwise, with the cheaper CPU backward."""


class DepthwiseConv2d(_CheaperBackward, CroppedConv2d):
    """:class:`CroppedConv2d`, depthwise, with the cheaper CPU backward."""


class DepthwiseConv3d(_CheaperBackward, CroppedConv3d):
    """:class:`CroppedConv3d`, depthwise, with the cheaper CPU backward."""


_CHEAPER = {CroppedConv1d: DepthwiseConv1d, CroppedConv2d: DepthwiseConv2d, CroppedConv3d: DepthwiseConv3d}


def cheap_depthwise_backward(model: nn.Module, enable: bool = True) -> int:
    """Give every depthwise, stride-1, bias-free convolution of ``model`` the cheaper CPU backward (or,
    with ``enable=False``, take it back). Modules change class in place, nothing else (parameters,
    buffers, hooks and state-dict keys stay). Returns how many convolutions changed."""
    changed = 0
    for module in model.modules():
        kind = type(module)
        target = None
        if enable and kind in _CHEAPER and _qualifies(module):
            target = _CHEAPER[kind]
        elif not enable and kind in _CHEAPER.values():
            target = next(plain for plain, cheaper in _CHEAPER.items() if cheaper is kind)
        if target is not None:
            module.__class__ = target
            changed += 1
    return changed


def _qualifies(conv: nn.Module) -> bool:
    return (
        conv.groups == conv.in_channels == conv.out_channels > 1
        and all(s == 1 for s in conv.stride)
        and conv.bias is None
        and not conv.transposed
    )
