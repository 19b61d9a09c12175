"""The found networks' depthwise convolutions with the search's cheaper CPU backward
(autodeeplab.ops.depthwise), and the dense gradient that resize hands its backward (ops.primitives)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.nets.network import build_network
from autodeeplab.ops.depthwise import DepthwiseConv3d, cheap_depthwise_backward
from autodeeplab.ops.primitives import CroppedConv3d, resize
from autodeeplab.space.autodeeplab.genotype import Genotype

SEPARABLE = Genotype(
    network_path=(0, 1, 1),
    cell=((("sep_conv_5x5", 0), ("sep_conv_3x3", 1)), (("atr_conv_3x3", 2), ("sep_conv_3x3", 0))),
)
"""Both sep convs at both strides, and an atrous conv (dense: left alone)."""


def _network(dims: int) -> nn.Module:
    torch.manual_seed(0)
    settings = dict(filter_multiplier=2, aspp_channels=4, decoder_channels=4, low_level_channels=4)
    return build_network(SEPARABLE, spatial_dims=dims, num_classes=3, in_channels=1, **settings).double()


@pytest.mark.parametrize("dims", [2, 3])
def test_only_depthwise_stride_one_convs_change_class_and_the_state_stays(dims):
    net = _network(dims)
    plain = copy.deepcopy(net)
    assert cheap_depthwise_backward(plain, enable=False) > 0
    changed = [name for name, m in net.named_modules() if type(m).__name__.startswith("Depthwise")]
    assert changed
    for name, m in net.named_modules():
        if name in changed:
            assert m.groups == m.in_channels == m.out_channels and m.stride == (1,) * dims and m.bias is None
        elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            assert m.stride != (1,) * dims  # a downward cell's first depthwise conv keeps the library's
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert all(isinstance(m, nn.modules.conv._ConvNd) for n, m in net.named_modules() if n in changed)
    assert cheap_depthwise_backward(net, enable=True) == 0  # nothing left to change


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_equals_the_librarys_backward(dims, channels_last):
    """Outputs bit for bit, every parameter's gradient and the input's to float64 rounding; the deepest
    maps are 2 wide, so the 5×5 filters run cropped."""
    net = _network(dims)
    plain = copy.deepcopy(net)
    cheap_depthwise_backward(plain, enable=False)
    x = torch.randn(2, 1, *(16,) * dims, dtype=torch.float64)
    if channels_last:
        layout = torch.channels_last if dims == 2 else torch.channels_last_3d
        x, net, plain = (
            x.contiguous(memory_format=layout),
            net.to(memory_format=layout),
            plain.to(memory_format=layout),
        )
    results = []
    for model in (net, plain):
        xs = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout masks
        y = model(xs)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y, xs.grad, {n: p.grad for n, p in model.named_parameters()}))
    (y, gx, grads), (y_ref, gx_ref, grads_ref) = results
    assert torch.equal(y, y_ref)
    assert torch.allclose(gx, gx_ref, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ref[name], rtol=1e-10, atol=1e-12), name


def test_the_cheaper_backward_is_the_one_that_runs_and_only_with_gradients():
    conv = CroppedConv3d(4, 4, 5, padding=2, groups=4, bias=False)
    cheap_depthwise_backward(conv)
    assert type(conv) is DepthwiseConv3d
    x = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    assert type(conv(x).grad_fn).__name__ == "_DepthwiseConvBackward"
    with torch.no_grad():
        assert conv(x).grad_fn is None
    # a 2-wide map: only the centre 3×3×3 taps can reach it, cropped before the cheaper backward
    small = torch.randn(1, 4, 2, 2, 2, requires_grad=True)
    out = conv(small)
    ref = F.conv3d(small, conv.weight, None, 1, 2, 1, 4)
    assert torch.allclose(out, ref, atol=1e-6)


def test_resize_hands_its_backward_a_dense_gradient_and_the_same_result():
    x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    other = torch.randn(2, 2, 8, 10, 12).contiguous(memory_format=torch.channels_last_3d)
    seen = []
    grads = []
    for hooked in (True, False):
        xs = x.clone().requires_grad_()
        if hooked:
            y = resize(xs, (8, 10, 12), align_corners=True)
            y.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=torch.channels_last_3d)))
        else:
            y = F.interpolate(xs, size=(8, 10, 12), mode="trilinear", align_corners=True)
        cat = torch.cat([y, other], dim=1)  # y's gradient is a strided slice of cat's
        (cat * torch.arange(cat.numel(), dtype=cat.dtype).view_as(cat)).sum().backward()
        grads.append(xs.grad)
    assert seen == [True]
    assert torch.equal(grads[0], grads[1])


# torch.func's imports script helper functions, which torch 2.13 reports as deprecated
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_func_transforms_take_the_librarys_convolution():
    """``torch.func`` (per-sample gradients with vmap, jvp) works on the swapped modules as on plain ones:
    the custom autograd function has no jvp or vmap rule, so the transforms get the library's conv."""
    from torch.func import functional_call, grad, jvp, vmap

    conv = CroppedConv3d(3, 3, 5, padding=2, groups=3, bias=False).double()
    plain = copy.deepcopy(conv)
    cheap_depthwise_backward(conv)
    x = torch.randn(4, 3, 5, 5, 5, dtype=torch.float64, requires_grad=True)

    def per_sample(module):
        def loss(params, sample):
            return functional_call(module, params, (sample.unsqueeze(0),)).square().sum()

        params = {k: v.detach() for k, v in module.named_parameters()}
        return vmap(grad(loss), in_dims=(None, 0))(params, x.detach())["weight"]

    assert torch.allclose(per_sample(conv), per_sample(plain), rtol=1e-12, atol=1e-12)
    tangent = torch.randn_like(x)
    out, jv = jvp(lambda t: conv(t), (x.detach(),), (tangent,))
    out_ref, jv_ref = jvp(lambda t: plain(t), (x.detach(),), (tangent,))
    assert torch.allclose(jv, jv_ref, rtol=1e-12, atol=1e-12) and torch.equal(out, out_ref)


def test_resize_passes_a_missing_gradient_through():
    """A function that gives its input no gradient hands the hook None: it stays None (no error)."""

    class FirstOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            return a * 2 + b

        @staticmethod
        def backward(ctx, g):
            return g * 2, None

    x = torch.randn(1, 2, 3, 4, requires_grad=True)
    a = torch.randn(1, 2, 6, 8, requires_grad=True)
    FirstOnly.apply(a, resize(x, (6, 8))).sum().backward()
    assert x.grad is None and torch.equal(a.grad, torch.full_like(a, 2.0))
