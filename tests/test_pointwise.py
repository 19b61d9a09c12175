"""1×1 convolutions as matmuls (autodeeplab.fast.pointwise) equal the convolution: outputs, gradients,
layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.fast.pointwise import apply_conv, is_channels_last, is_pointwise, pointwise_conv

LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}
TOL = {"atol": 1e-12, "rtol": 1e-10}


def conv_nd(x, weight, bias, groups):
    return {4: F.conv2d, 5: F.conv3d}[x.dim()](x, weight, bias, groups=groups)


@pytest.mark.parametrize("spatial", [(7, 5), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_equals_the_convolution(spatial, groups, bias, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *spatial, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=LAYOUTS[x.dim()])
    w = torch.randn(9, 6 // groups, *(1,) * len(spatial), generator=g, dtype=torch.float64)
    b = torch.randn(9, generator=g, dtype=torch.float64) if bias else None
    grad_out = torch.randn(2, 9, *spatial, generator=g, dtype=torch.float64)
    results = []
    for fn in (pointwise_conv, conv_nd):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if bias else None
        y = fn(xs, ws, bs, groups)
        y.backward(grad_out)
        results.append((y, xs.grad, ws.grad, bs.grad if bias else None, y))
    (y, gx, gw, gb, out), (y_ref, gx_ref, gw_ref, gb_ref, _) = results
    assert y.shape == y_ref.shape == (2, 9, *spatial)
    for a, r in [(y, y_ref), (gx, gx_ref), (gw, gw_ref)] + ([(gb, gb_ref)] if bias else []):
        assert torch.allclose(a, r, **TOL)
    # channels-last in, channels-last out, as the convolution does; the matmul path is only taken then
    assert is_channels_last(out) == channels_last


def test_only_plain_one_by_one_convs_qualify():
    assert is_pointwise(nn.Conv2d(4, 8, 1, bias=False))
    assert is_pointwise(nn.Conv3d(4, 8, 1, groups=2))
    assert not is_pointwise(nn.Conv2d(4, 8, 3, padding=1))
    assert not is_pointwise(nn.Conv2d(4, 8, 1, stride=2))
    assert not is_pointwise(nn.Conv2d(4, 8, 1, padding=1))
    assert not is_pointwise(nn.ConvTranspose2d(4, 8, 1))
    assert not is_pointwise(nn.BatchNorm2d(4))


def test_apply_conv_falls_back_to_the_module_for_other_convs():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    strided = nn.Conv2d(4, 8, 1, stride=2)
    assert torch.equal(
        apply_conv(strided, x, pointwise_as_matmul=True), strided(x)
    )  # not a stride-1 1×1: the module itself
    pw = nn.Conv2d(4, 8, 1)
    assert torch.allclose(apply_conv(pw, x, pointwise_as_matmul=True), pw(x), atol=1e-6)
    assert torch.equal(apply_conv(pw, x, pointwise_as_matmul=False), pw(x))


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_conv_under_autocast_matches_the_convolution(groups):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // groups, 1, 1)
    outs, grads = [], []
    for fn in (pointwise_conv, conv_nd):
        ws = w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x, ws, None, groups)
        y.float().sum().backward()
        outs.append(y)
        grads.append(ws.grad)
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    assert torch.allclose(outs[0].float(), outs[1].float(), atol=0.05, rtol=0.02)
    assert grads[0].dtype == torch.float32  # the parameter's own dtype
    assert torch.allclose(grads[0], grads[1], atol=0.1, rtol=0.02)


@pytest.mark.parametrize("groups", [1, 2])
def test_saved_activation_is_the_inputs_storage_counted_as_the_input(groups):
    """What the backward keeps of ``x`` is ``x``'s own storage (the matrix view the products read, no
    copy), and the memory accounting counts it once, as the ``[N, C, H, W]`` activation it is."""
    from autodeeplab.fast.memory import SavedTensorCounter

    x = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 4 // groups, 1, 1, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        pointwise_conv(x, w, groups=groups).sum().backward()
    activations = [t for t in saved if t.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()]
    assert activations and all(
        t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in activations
    )
    with SavedTensorCounter(exclude=[w]) as counter:
        pointwise_conv(x, w, groups=groups)
    assert [(r.nbytes, r.shape) for r in counter.records] == [(x.numel() * 4, (2, 4, 5, 6))]


@pytest.mark.parametrize("groups", [1, 3])
def test_backward_is_two_products_into_one_allocation(groups):
    """Both gradients read the output gradient through one view and the filters through the view the
    forward made: two products, one allocation (the input gradient, written in place through its
    transposed view) and nothing copied; the input gradient equals g · W computed directly."""
    from autodeeplab.fast.dispatch import count_dispatches

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(9, 6 // groups, 1, 1, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 9, 5, 7, generator=g, dtype=torch.float64)
    grad = grad.contiguous(memory_format=torch.channels_last)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = pointwise_conv(xs, ws, groups=groups)
    counts = count_dispatches(lambda: y.backward(grad))
    product = "mm" if groups == 1 else "bmm"
    assert counts.by_op[product] == 2 and counts.by_class["alloc"] == 1
    assert counts.by_class["kernel"] == 2  # no copy, no sum
    assert counts.by_op["as_strided"] == 2  # gᵀ for both products, the input gradient's transposed view
    # the direct form: per group [M, O/G] · [O/G, C/G] on the [N, *S, C] rows
    g_rows = grad.permute(0, 2, 3, 1).reshape(-1, groups, 9 // groups).transpose(0, 1)
    w_mats = w.view(groups, 9 // groups, 6 // groups)
    direct = torch.bmm(g_rows, w_mats).transpose(0, 1).reshape(2, 5, 7, 6).permute(0, 3, 1, 2)
    assert torch.allclose(xs.grad, direct, rtol=1e-13, atol=1e-14)  # bit for bit with this CPU's BLAS
    assert is_channels_last(xs.grad)
