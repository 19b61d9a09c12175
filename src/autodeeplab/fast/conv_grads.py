"""The backward of several convolutions of one input, for the fast path's autograd functions that keep
that input themselves (:mod:`autodeeplab.fast.depthwise`, :mod:`autodeeplab.fast.channel_groups`), and a
depthwise convolution's backward as forward convolutions.

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

Equal to the library's backward up to float rounding (the same products summed in another order, tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from autodeeplab.ops.primitives import conv_function


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


def library_backward(grad, x, w, stride, padding, dilation, depthwise, needs_x, needs_w):
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
