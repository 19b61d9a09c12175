"""A depthwise conv's backward as forward convolutions (autodeeplab.ops.depthwise.depthwise_backward):
equal to the convolution library's backward, and used exactly where it is meant to be."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from autodeeplab.fast.depthwise import repeated_depthwise_conv
from autodeeplab.ops.depthwise import backward_as_forward_convs, depthwise_backward, depthwise_conv

TOL = {"atol": 1e-12, "rtol": 1e-10}
LAYOUT = {4: torch.channels_last, 5: torch.channels_last_3d}


def library_backward(grad, x, w, padding, dilation, mask=(True, True)):
    dims = x.dim() - 2
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad,
        x,
        w,
        None,
        [1] * dims,
        list(padding),
        list(dilation),
        False,
        [0] * dims,
        x.shape[1],
        [*mask, False],
    )
    return gx, gw


@pytest.mark.parametrize("spatial", [(11,), (9, 7), (5, 6, 4)])
@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_gradients_equal_the_library(spatial, kernel, dilation, batch, channels_last):
    g = torch.Generator().manual_seed(kernel * 10 + dilation + batch)
    dims = len(spatial)
    x = torch.randn(batch, 5, *spatial, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, 5, *spatial, generator=g, dtype=torch.float64)
    if channels_last and dims > 1:
        x, grad = x.contiguous(memory_format=LAYOUT[x.dim()]), grad.contiguous(memory_format=LAYOUT[x.dim()])
    w = torch.randn(5, 1, *(kernel,) * dims, generator=g, dtype=torch.float64)
    padding, dil = (dilation * (kernel - 1) // 2,) * dims, (dilation,) * dims
    got = depthwise_backward(grad, x, w, padding, dil, True, True)
    expected = library_backward(grad, x, w, padding, dil)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL)
    # one gradient at a time: the other is None, and the input gradient reads no value of x
    gx, gw = depthwise_backward(grad, torch.full_like(x, float("nan")), w, padding, dil, True, False)
    assert gw is None and torch.allclose(gx, expected[0], **TOL)
    gx, gw = depthwise_backward(grad, x, w, padding, dil, False, True)
    assert gx is None and torch.allclose(gw, expected[1], **TOL)


def test_where_it_applies():
    """CPU, stride 1, "same" padding, multiplier 1; not for 2D filters of at most 3×3 undilated (the
    library's backward is as fast there), always for volumes (it is not)."""
    image, volume = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 6, 6, 6)

    def applies(x, k, stride=1, padding=None, dilation=1, out=4):
        dims = x.dim() - 2
        p = dilation * (k - 1) // 2 if padding is None else padding
        w = torch.zeros(out, 1, *(k,) * dims)
        return backward_as_forward_convs(x, w, (stride,) * dims, (p,) * dims, (dilation,) * dims)

    assert applies(image, 5) and applies(image, 3, dilation=2) and applies(image, 5, dilation=2)
    assert not applies(image, 3)  # small undilated 2D filters: the library
    assert applies(volume, 3) and applies(volume, 5)
    assert not applies(image, 5, stride=2)
    assert not applies(image, 5, padding=0)  # "valid": not the transposed conv of the same padding
    assert not applies(image, 5, out=8)  # a multiplier: not this function's case


@pytest.mark.parametrize("spatial", [(9, 7), (5, 6, 4)])
def test_the_autograd_function_equals_the_convolution(spatial):
    """``depthwise_conv`` with one filter per channel (the separable convs' second depthwise conv): value
    and both gradients as the library's, weights learning or frozen."""
    g = torch.Generator().manual_seed(1)
    dims = len(spatial)
    x = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64).contiguous(
        memory_format=LAYOUT[2 + dims]
    )
    w = torch.randn(4, 1, *(5,) * dims, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 4, *spatial, generator=g, dtype=torch.float64)
    conv = {2: F.conv2d, 3: F.conv3d}[dims]
    for frozen in (False, True):
        results = []
        for fn in (depthwise_conv, lambda a, b, p, d: conv(a, b, None, 1, p, d, 4)):
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_(not frozen)
            y = fn(xs, ws, (2,) * dims, (1,) * dims)
            y.backward(grad)
            results.append((y, xs.grad, ws.grad))
        assert results[0][0].grad_fn.name().endswith("_DepthwiseConvBackward")
        assert (results[0][2] is None) == (results[1][2] is None) == frozen
        for a, b in zip(*results, strict=True):
            if a is not None:
                torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("forward_convs", [False, True])
def test_the_repeated_depthwise_conv_equals_the_library_either_way(forward_convs):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(3 * 4, 1, 5, 5, generator=g, dtype=torch.float64)
    results = []
    for fn in ("fast", "library"):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        if fn == "fast":
            y = repeated_depthwise_conv(xs, ws, (1, 1), (2, 2), (1, 1), 1, forward_convs)
        else:
            y = F.conv2d(torch.cat([xs] * 4, 1), ws, None, 1, 2, 1, 12)
        y.square().sum().backward()
        results.append((y, xs.grad, ws.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_bf16_under_autocast_stays_close_to_float32():
    """Reduced precision by choice: the bf16 gradients stay within bf16 rounding of the float32 ones."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 17, 17, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 1, 5, 5, generator=g)
    grads = []
    for bf16 in (False, True):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = depthwise_conv(xs, ws, (2, 2), (1, 1))
        y.float().square().sum().backward()
        grads.append((xs.grad, ws.grad))
    for a, b in zip(*grads, strict=True):
        assert a.dtype == torch.float32
        assert ((a - b).abs().max() / b.abs().max()) < 0.02


@pytest.mark.parametrize("kernel", [3, 5])
def test_an_input_only_gradient_reads_the_output_gradient_as_its_stand_in(kernel):
    """Frozen filters (an architecture step): the repeated depthwise conv's input gradient needs only the
    repeat's shape and layout, which a stride-1 "same" conv's output gradient has: no allocation for it, and
    the gradient equals the library's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(3 * 4, 1, kernel, kernel, generator=g, dtype=torch.float64)  # frozen
    grad = torch.randn(2, 12, 9, 8, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    pad = (kernel // 2,) * 2
    allocated = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.empty, torch.ops.aten.empty_strided):
                allocated.append(tuple(args[0]))
            return func(*args, **(kwargs or {}))

    a = x.clone().requires_grad_()
    y = repeated_depthwise_conv(a, w, (1, 1), pad, (1, 1), 1, True)
    with Allocations():
        (got,) = torch.autograd.grad(y, [a], grad)
    assert (2, 12, 9, 8) not in allocated
    b = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(F.conv2d(torch.cat([b] * 4, 1), w, None, 1, pad, 1, 12), [b], grad)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_edge_repeats_nothing(channels_last):
    """A state read by one edge (E = 1): its repeat is the input itself and the repeat's backward the
    gradient itself, when the input is laid out as the repeat would be; a strided input is still copied."""
    from autodeeplab.fast.depthwise import _sum_edge_copies, repeat_edge_major

    x = torch.randn(2, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for k in (1, 2):
        assert repeat_edge_major(x, 1, k) is x
        assert _sum_edge_copies(x, k, 1) is x
    strided = torch.randn(2, 6, 5, 14)[..., ::2]
    copy = repeat_edge_major(strided, 1)
    assert copy is not strided and torch.equal(copy, strided) and copy.is_contiguous()
