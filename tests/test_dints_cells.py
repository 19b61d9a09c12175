"""DiNTS cells: every op keeps shapes in 2D and 3D, the pseudo-3D kernels, edges between depths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autodeeplab.space.dints.arch import OP_SETS
from autodeeplab.space.dints.cells import EdgeCell, FactorizedReduce, build_dints_op


@pytest.mark.parametrize("dims", [2, 3])
def test_every_op_keeps_the_shape_and_trains(dims):
    for name in OP_SETS[f"dints-{dims}d"]:
        op = build_dints_op(name, 4, dims)
        x = torch.randn(2, 4, *[5, 6, 7][:dims], requires_grad=True)
        y = op(x)
        assert y.shape == x.shape
        y.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pseudo_3d_ops_are_a_plane_then_a_line():
    kernels = {
        name: [m.weight.shape[2:] for m in build_dints_op(name, 2, 3).modules() if isinstance(m, nn.Conv3d)]
        for name in OP_SETS["dints-3d"][1:]
    }
    assert kernels == {
        "conv_3x3x3": [(3, 3, 3)],
        "conv_3x3x1": [(3, 3, 1), (1, 1, 3)],
        "conv_3x1x3": [(3, 1, 3), (1, 3, 1)],
        "conv_1x3x3": [(1, 3, 3), (3, 1, 1)],
    }
    with pytest.raises(ValueError, match="unknown DiNTS op 'conv_3x3x1' for 2D"):
        build_dints_op("conv_3x3x1", 2, 2)


@pytest.mark.parametrize("size", [(6, 8, 4), (5, 7, 3)])
def test_factorized_reduce_halves_odd_and_even_sizes(size):
    down = FactorizedReduce(2, 4, 3, "instance")
    assert down(torch.randn(1, 2, *size)).shape == (1, 4, *[(s + 1) // 2 for s in size])


def test_edges_resample_to_the_target_depth_and_mix_their_ops():
    widths = {0: 4, 1: 8, 2: 16}.__getitem__
    ops = OP_SETS["dints-3d"]
    torch.manual_seed(0)
    x1 = torch.randn(2, 8, 5, 6, 4)
    down, same, up = (EdgeCell(s, 1, widths, ops, 3) for s in (0, 1, 2))
    assert down(torch.randn(2, 4, 10, 12, 7), (5, 6, 4), torch.ones(5) / 5).shape == (2, 8, 5, 6, 4)
    assert up(torch.randn(2, 16, 3, 3, 2), (5, 6, 4), torch.ones(5) / 5).shape == (2, 8, 5, 6, 4)
    weights = torch.softmax(torch.randn(5), dim=0)
    mixed = same(x1, (5, 6, 4), weights)
    torch.testing.assert_close(mixed, sum(w * op(x1) for w, op in zip(weights, same.ops, strict=True)))
    chosen = EdgeCell(1, 1, widths, ("conv_1x3x3",), 3)
    assert chosen(x1, (5, 6, 4)).shape == x1.shape  # a found network's edge: one op, no weights
    with pytest.raises(ValueError, match="neighbouring depths"):
        EdgeCell(0, 2, widths, ops, 3)


@pytest.mark.parametrize("size", [(6, 8, 4), (5, 7, 3)])
def test_factorized_reduce_equals_two_offset_stride_2_convolutions(size):
    """The subsample-first evaluation against the definition: ReLU, 1×1 stride-2 convs of the input and of
    the input shifted by one voxel along every axis (zero at the end), concatenated, normed."""
    torch.manual_seed(0)
    down = FactorizedReduce(2, 4, 3, "instance").double()
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    r = torch.relu(x)
    shifted = nn.functional.pad(r[..., 1:, 1:, 1:], [0, 1] * 3)
    first = nn.functional.conv3d(r, down.first.weight, stride=2)
    second = nn.functional.conv3d(shifted, down.second.weight, stride=2)
    torch.testing.assert_close(down(x), down.norm(torch.cat([first, second], dim=1)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "norm,recompute,op_set,dims",
    [
        ("instance", True, "dints", 3),
        ("batch", True, "dints", 3),
        ("instance", False, "dints", 3),
        ("batch", True, "autodeeplab", 3),
        ("batch", False, "autodeeplab", 3),
        # images (search --space dints on 2D data): each op set and norm, both recompute settings
        ("instance", True, "dints", 2),
        ("batch", False, "dints", 2),
        ("batch", True, "autodeeplab", 2),
        ("instance", False, "autodeeplab", 2),
    ],
)
def test_the_lean_supernet_equals_the_reference(norm, recompute, op_set, dims):
    """Shared ReLU and weights folded into the norms: outputs, gradients of weights and architecture
    logits, and batch-norm running statistics as the reference Σ_k η·w_k·op_k(x), in float64."""
    from autodeeplab.search.spaces import measured_op_memory
    from autodeeplab.space.dints.network import DintsShape
    from autodeeplab.space.dints.supernet import DintsSupernet

    shape = DintsShape(3, 2, 4, spatial_dims=dims, norm=norm, in_channels=1, num_classes=3)
    nets = []
    for lean in (True, False):
        torch.manual_seed(0)
        extra = measured_op_memory(OP_SETS[f"{op_set}-{dims}d"], dims)
        net = DintsSupernet(shape, lean=lean, recompute=recompute, op_set=op_set, op_memory=extra).double()
        with torch.no_grad():
            net.edge_logits.normal_()
            net.op_logits.normal_()
        nets.append(net)
    # Not smaller: instance norm over the 2×2×1 maps of 1/8 would make the comparison ill-conditioned.
    x = torch.randn(2, 1, 24, 20, 16, dtype=torch.float64)
    x = x[..., 0] if dims == 2 else x
    outs = []
    for net in nets:
        out = net(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, a), b in zip(nets[0].named_buffers(), nets[1].buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
