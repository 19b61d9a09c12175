"""Every primitive keeps channels and maps spatial size S to ceil(S / stride), in 2D and 3D."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.ops.primitives import OPS, PRIMITIVES, ReLUConvBN, SepConv, build_op, resize, strided_size


def test_table_order_and_names():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "atr_conv_3x3",
        "atr_conv_5x5",
    )
    assert tuple(OPS) == PRIMITIVES


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims,size", [(2, (9, 12)), (3, (5, 6, 7))])
def test_shape_and_stride(name, stride, dims, size):
    x = torch.randn(2, 6, *size)
    y = build_op(name, 6, stride, affine=True, dims=dims)(x)
    assert y.shape == (2, 6, *(math.ceil(s / stride) for s in size))


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(1, 4, 7, 7)
    assert torch.count_nonzero(build_op("none", 4)(x)) == 0
    assert torch.equal(build_op("skip_connect", 4)(x), x)


def test_sep_conv_structure_is_two_relu_dw_pw_bn_units():
    op = SepConv(8, 5)
    kinds = ["Conv2d" if isinstance(m, nn.Conv2d) else type(m).__name__ for m in op]  # CroppedConv2d too
    assert kinds == ["ReLU", "Conv2d", "Conv2d", "BatchNorm2d"] * 2
    assert op[1].groups == 8 and op[1].kernel_size == (5, 5)
    assert op[2].kernel_size == (1, 1)


def test_atrous_conv_is_dense_and_dilated():
    op = build_op("atr_conv_5x5", 8)
    conv = op[1]
    assert conv.groups == 1 and conv.dilation == (2, 2) and conv.kernel_size == (5, 5)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("dims,size", [(2, (9, 12)), (3, (5, 6, 7))])
def test_strided_atrous_is_resize_then_undilated_conv(kernel, dims, size):
    """Released ``nas_cell.py``, stride 2: ReLU → resize to ceil(S/2), corners aligned → k×k, rate 1 → BN."""
    torch.manual_seed(0)
    op = build_op(f"atr_conv_{kernel}x{kernel}", 4, 2, affine=True, dims=dims).eval()
    with torch.no_grad():
        op[2].running_mean.uniform_(-1, 1)  # a non-trivial BN, so that it is seen to be applied
        op[2].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, *size)
    half = tuple(math.ceil(s / 2) for s in size)
    mode = "bilinear" if dims == 2 else "trilinear"
    resized = F.interpolate(torch.relu(x), size=half, mode=mode, align_corners=True)
    conv = F.conv2d if dims == 2 else F.conv3d
    expected = op[2](conv(resized, op[1].weight, padding=kernel // 2))
    assert op[1].dilation == (1,) * dims and op[1].stride == (1,) * dims
    torch.testing.assert_close(op(x), expected, rtol=0, atol=1e-6)
    # Not the strided dilated conv it replaces (same weights, different maths).
    dilated = op[2](conv(torch.relu(x), op[1].weight, stride=2, padding=kernel - 1, dilation=2))
    assert dilated.shape == expected.shape and not torch.allclose(dilated, expected, atol=1e-3)


def test_strided_atrous_keeps_the_parameters_and_keys_of_a_dilated_conv():
    for kernel in (3, 5):
        new = build_op(f"atr_conv_{kernel}x{kernel}", 6, 2)
        old = ReLUConvBN(6, 6, kernel, 2, 2)
        assert {k: v.shape for k, v in new.state_dict().items()} == {
            k: v.shape for k, v in old.state_dict().items()
        }
        stride1 = build_op(f"atr_conv_{kernel}x{kernel}", 6, 1)
        x = torch.randn(1, 6, 7, 8)
        torch.testing.assert_close(stride1(x), stride1[2](stride1[1](torch.relu(x))))
        assert stride1[1].dilation == (2, 2)


def test_strided_size_is_ceil_half_like_tensorflow_scale_dimension():
    for n in range(1, 40):
        assert strided_size((n,), 2) == (math.ceil(n / 2),) == (int((n - 1) * 0.5 + 1),)


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 4, 4)
    assert torch.allclose(build_op("avg_pool_3x3", 1)(x), x)  # corners average 4 ones, not 4/9


def test_3d_avg_pool_matches_torch_and_handles_tiny_volumes():
    x = torch.randn(2, 3, 5, 6, 7)
    for stride in (1, 2):
        ref = torch.nn.AvgPool3d(3, stride, 1, count_include_pad=False)(x)
        assert torch.allclose(build_op("avg_pool_3x3", 3, stride, dims=3)(x), ref, atol=1e-6)
    tiny = torch.randn(1, 2, 1, 2, 1)
    assert torch.allclose(
        build_op("avg_pool_3x3", 2, 1, dims=3)(tiny), tiny.mean(dim=(2, 3, 4), keepdim=True).expand_as(tiny)
    )


def test_resize_identity_and_size():
    x = torch.randn(1, 2, 5, 5)
    assert resize(x, (5, 5)) is x
    assert resize(x, (10, 9)).shape == (1, 2, 10, 9)


def test_unknown_primitive():
    with pytest.raises(KeyError, match="unknown primitive 'conv_7x7'"):
        build_op("conv_7x7", 4)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(
    ("kernel", "dilation", "stride", "groups"),
    [
        (3, 1, 1, 1),
        (5, 1, 1, 4),
        (5, 2, 1, 4),
        (3, 6, 1, 1),
        (3, 12, 1, 1),
        (5, 1, 2, 4),
        (3, 2, 2, 1),
        (1, 1, 1, 1),
    ],
)
def test_cropped_kernel_convolutions_equal_the_full_kernel(dims, kernel, dilation, stride, groups):
    """Skipping the taps that read only padding changes no output and no gradient (float64, brute force
    against ``nn.ConvNd``), on maps smaller than, equal to and larger than the kernel's reach."""
    from autodeeplab.ops.primitives import conv_nd

    full_class = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    pad = dilation * (kernel - 1) // 2
    torch.manual_seed(dims * 100 + kernel * 10 + dilation)
    cropped = conv_nd(dims)(4, 4, kernel, stride, pad, dilation, groups, bias=True).double()
    full = full_class(4, 4, kernel, stride, pad, dilation, groups, bias=True).double()
    full.load_state_dict(cropped.state_dict())
    for size in [(1, 2, 3), (2, 2, 2), (3, 4, 3), (5, 7, 6), (13, 9, 11)]:
        x = torch.randn(2, 4, *size[:dims], dtype=torch.float64, requires_grad=True)
        out = cropped(x)
        want = full(x)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(want)
        grads = torch.autograd.grad(out, [x, cropped.weight, cropped.bias], g)
        wants = torch.autograd.grad(want, [x, full.weight, full.bias], g)
        for got, expected in zip(grads, wants, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_useful_half_widths_by_hand():
    from autodeeplab.ops.primitives import useful_half_widths

    # A 5x5x5 kernel on a 2x2x2 map reaches one voxel either side; rate 12 on a 3x4x3 map only its centre.
    assert useful_half_widths((2, 2, 2), (5, 5, 5), (1, 1, 1)) == (1, 1, 1)
    assert useful_half_widths((3, 4, 3), (3, 3, 3), (12, 12, 12)) == (0, 0, 0)
    assert useful_half_widths((5, 7, 5), (5, 5, 5), (2, 2, 2)) == (2, 2, 2)  # offsets 2, 4 both reach
    assert useful_half_widths((4, 9), (5, 5), (2, 2)) == (1, 2)
