"""The multiplier depthwise conv's flipped-filter input gradient (autodeeplab.fast.depthwise) is exact."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from autodeeplab.ops.depthwise import depthwise_conv

TOL = {"atol": 1e-12, "rtol": 1e-10}


def conv_nd(x, w, padding, dilation):
    return {4: F.conv2d, 5: F.conv3d}[x.dim()](x, w, None, 1, padding, dilation, x.shape[1])


@pytest.mark.parametrize(
    ("spatial", "kernel", "dilation", "multiplier"),
    [((9, 7), 3, 1, 5), ((9, 7), 5, 1, 3), ((8, 8), 3, 2, 2), ((5, 6, 4), 3, 1, 3), ((7, 7), 5, 1, 1)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_equals_the_library(spatial, kernel, dilation, multiplier, channels_last):
    g = torch.Generator().manual_seed(0)
    dims = len(spatial)
    x = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    w = torch.randn(4 * multiplier, 1, *(kernel,) * dims, generator=g, dtype=torch.float64)
    padding, dil = (dilation * (kernel - 1) // 2,) * dims, (dilation,) * dims
    grad = torch.randn(2, 4 * multiplier, *spatial, generator=g, dtype=torch.float64)
    results = []
    for fn in (depthwise_conv, conv_nd):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xs, ws, padding, dil)
        y.backward(grad)
        results.append((y, xs.grad, ws.grad))
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, **TOL)


def test_only_the_input_gradient_is_computed_when_the_weights_are_frozen():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(6, 1, 3, 3)  # no gradient wanted (an architecture step)
    depthwise_conv(x, w, (1, 1), (1, 1)).square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.conv2d(xr, w, None, 1, 1, 1, 3).square().sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)


def test_not_same_padding_falls_back_to_the_library():
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 7, 7), torch.randn(4, 1, 3, 3)
    y = depthwise_conv(x, w, (0, 0), (1, 1))  # "valid" padding: the output shrinks
    assert y.shape == (1, 4, 5, 5)
    assert torch.equal(y, F.conv2d(x, w, None, 1, 0, 1, 2))


def test_under_autocast_it_runs_in_bf16_like_the_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(9, 1, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv(x, w, (1, 1), (1, 1))
        ref = F.conv2d(x, w, None, 1, 1, 1, 3)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref.float(), atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.float32  # the leaves' own dtypes


@pytest.mark.parametrize(("spatial", "stride"), [((9, 7), 1), ((9, 7), 2), ((5, 6, 4), 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_repeated_depthwise_conv_equals_the_conv_of_the_concatenated_input(spatial, stride, channels_last):
    """The input repeated E times edge-major, then a plain depthwise conv (``repeat_separable_input``):
    value and both gradients equal to the library's conv of ``cat([x] * E)``, and only ``x`` and the
    filters kept for the backward, not the E-fold repeat."""
    from autodeeplab.fast.depthwise import repeat_edge_major, repeated_depthwise_conv
    from autodeeplab.fast.memory import SavedTensorCounter

    g = torch.Generator().manual_seed(0)
    dims, edges = len(spatial), 3
    x = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    w = torch.randn(4 * edges, 1, *(3,) * dims, generator=g, dtype=torch.float64)
    assert torch.equal(repeat_edge_major(x, edges), torch.cat([x] * edges, dim=1))
    conv = {2: F.conv2d, 3: F.conv3d}[dims]
    a, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    b, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    with SavedTensorCounter(exclude=[wa]) as counter:
        ya = repeated_depthwise_conv(a, wa, (stride,) * dims, (1,) * dims, (1,) * dims)
    yb = conv(torch.cat([b] * edges, dim=1), wb, None, stride, 1, 1, 4 * edges)
    assert torch.allclose(ya, yb, **TOL)
    grad = torch.randn(yb.shape, generator=g, dtype=torch.float64)
    for got, expected in zip(
        torch.autograd.grad(ya, [a, wa], grad), torch.autograd.grad(yb, [b, wb], grad), strict=True
    ):
        assert torch.allclose(got, expected, **TOL)
    assert counter.total_bytes == x.numel() * x.element_size()  # x only, not its E copies


@pytest.mark.parametrize("channel_groups", [1, 2])
@pytest.mark.parametrize("frozen", [False, True])
def test_depthwise_convs_on_one_repeat_equal_one_call_each(channel_groups, frozen):
    """Both sep convs' first depthwise convs (3×3 and 5×5) on one repeat of their common input: values and
    gradients equal one :func:`repeated_depthwise_conv` each, with filters that learn or are frozen (an
    architecture step), and only the input is kept for the backward."""
    from torch import nn

    from autodeeplab.fast.depthwise import repeated_depthwise_conv, repeated_depthwise_convs
    from autodeeplab.fast.memory import SavedTensorCounter

    g = torch.Generator().manual_seed(3)
    k, edges, c = channel_groups, 3, 4
    x = torch.randn(2, k * c, 9, 7, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    likes = [nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, c, 5, padding=2, groups=c)]
    weights = [torch.randn(k * edges * c, 1, s, s, generator=g, dtype=torch.float64) for s in (3, 5)]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    wa = [w.clone().requires_grad_(not frozen) for w in weights]
    wb = [w.clone().requires_grad_(not frozen) for w in weights]
    with SavedTensorCounter(exclude=wa) as counter:
        got = repeated_depthwise_convs(a, wa, likes, k)
    expected = [
        repeated_depthwise_conv(b, w, m.stride, m.padding, m.dilation, k)
        for w, m in zip(wb, likes, strict=True)
    ]
    assert counter.total_bytes == x.numel() * x.element_size()  # x only
    grads = [torch.randn(e.shape, generator=g, dtype=torch.float64) for e in expected]
    inputs_a, inputs_b = [a] + ([] if frozen else wa), [b] + ([] if frozen else wb)
    for u, v in zip(got, expected, strict=True):
        assert torch.allclose(u, v, **TOL)
    for u, v in zip(
        torch.autograd.grad(got, inputs_a, grads), torch.autograd.grad(expected, inputs_b, grads), strict=True
    ):
        assert torch.allclose(u, v, **TOL)
