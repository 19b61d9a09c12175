"""A node's G inputs side by side in the channels (``groups_in_channels``, issue 16): every piece equals G
separate calls on the groups — values, gradients, BN running statistics — and the supernet takes the path.

The supernet-level equality with the reference, alone and with every other switch, is in
``tests/test_perf_exactness.py`` (the switch is one of its factors)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autodeeplab.fast.channel_groups import shared_module_conv, uses_channel_groups
from autodeeplab.fast.depthwise import repeat_edge_major, repeated_depthwise_conv
from autodeeplab.fast.execution import ExecutionConfig
from autodeeplab.fast.grouped_bn import multi_batch_norm, shared_batch_norm
from autodeeplab.fast.pointwise import pointwise_conv

TOL = {"atol": 1e-10, "rtol": 1e-8}
K = 3  # channel groups


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return t.contiguous()
    return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)


def _groups(x: torch.Tensor, k: int = K) -> list[torch.Tensor]:
    """``[N, K·C, *S]`` → K tensors ``[N, C, *S]``."""
    return list(x.chunk(k, dim=1))


def _bns(count: int, channels: int, affine: bool = False) -> list[nn.BatchNorm2d]:
    torch.manual_seed(3)
    bns = [nn.BatchNorm2d(channels, affine=affine).double() for _ in range(count)]
    for bn in bns:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_()
    return bns


def _equal_grads(outputs: tuple, expected: tuple, wrt: list, wrt_expected: list, grad: torch.Tensor) -> None:
    got = torch.autograd.grad(outputs, wrt, grad)
    for u, v in zip(got, torch.autograd.grad(expected, wrt_expected, grad), strict=True):
        assert torch.allclose(u, v, **TOL)


def _state(bns: list[nn.Module]) -> list[torch.Tensor]:
    return [t.clone() for bn in bns for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", [None, "module", "channel"])
def test_multi_batch_norm_in_channel_groups_equals_calls_group_by_group(affine, channels_last, scale):
    """E modules on ``[N, K·E·C, *S]``: output, input and α gradients, and the running statistics equal
    K·(one multi-module call per group, in group order); evaluation mode as well."""
    g = torch.Generator().manual_seed(0)
    e, c = 2, 3
    x = _layout(torch.randn(2, K * e * c, 5, 4, generator=g, dtype=torch.float64), channels_last)
    s = {None: None, "module": torch.rand(e, generator=g, dtype=torch.float64) + 0.5}
    s["channel"] = torch.rand(e * c, generator=g, dtype=torch.float64) + 0.5
    bns = _bns(e, c, affine)
    expected_bns = copy.deepcopy(bns)
    a = x.clone().requires_grad_()
    sa = s[scale].clone().requires_grad_() if scale else None
    got = multi_batch_norm(a, bns, scale=sa, channel_groups=K)
    b = x.clone().requires_grad_()
    sb = s[scale].clone().requires_grad_() if scale else None
    expected = torch.cat([multi_batch_norm(t, expected_bns, scale=sb) for t in _groups(b)], dim=1)
    assert torch.allclose(got, expected, **TOL)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    inputs = [a] + ([sa] if scale else []) + ([bns[0].weight] if affine else [])
    references = [b] + ([sb] if scale else []) + ([expected_bns[0].weight] if affine else [])
    _equal_grads(got, expected, inputs, references, grad)
    for u, v in zip(_state(bns), _state(expected_bns), strict=True):
        assert torch.allclose(u.double(), v.double(), **TOL)
    for bn in bns + expected_bns:
        bn.eval()
    with torch.no_grad():
        got = multi_batch_norm(x, bns, channel_groups=K)
        expected = torch.cat([multi_batch_norm(t, expected_bns) for t in _groups(x)], dim=1)
    assert torch.allclose(got, expected, **TOL)


def test_shared_batch_norm_in_channel_groups_equals_calls_group_by_group():
    """One normalisation recorded by E modules, for K groups at once: as K shared calls in order."""
    g = torch.Generator().manual_seed(1)
    e, c = 3, 4
    x = _layout(torch.randn(2, K * c, 5, 5, generator=g, dtype=torch.float64), True)
    bns = _bns(e, c)
    expected_bns = copy.deepcopy(bns)
    got = shared_batch_norm(x, bns, channel_groups=K)
    expected = torch.cat([shared_batch_norm(t, expected_bns) for t in _groups(x)], dim=1)
    assert torch.allclose(got, expected, **TOL)
    for u, v in zip(_state(bns), _state(expected_bns), strict=True):
        assert torch.allclose(u.double(), v.double(), **TOL)
    for bn in bns + expected_bns:
        bn.eval()
    got = shared_batch_norm(x, bns, channel_groups=K)  # [E, N, K·C, *S]
    expected = torch.cat([shared_batch_norm(t, expected_bns) for t in _groups(x)], dim=2)
    assert got.shape == (e, 2, K * c, 5, 5)
    assert torch.allclose(got, expected, **TOL)


@pytest.mark.parametrize(("spatial", "stride"), [((9, 7), 1), ((9, 7), 2), ((5, 6, 4), 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_repeated_depthwise_conv_in_channel_groups_equals_the_groups_one_by_one(
    spatial, stride, channels_last
):
    """Each group repeated E times in place, the depthwise conv with each group's filters: value and both
    gradients as the plain repeated depthwise conv of each group."""
    g = torch.Generator().manual_seed(2)
    dims, edges, c = len(spatial), 2, 3
    x = _layout(torch.randn(2, K * c, *spatial, generator=g, dtype=torch.float64), channels_last)
    w = torch.randn(K * edges * c, 1, *(3,) * dims, generator=g, dtype=torch.float64)
    repeated = repeat_edge_major(x, edges, K)
    assert torch.equal(repeated, torch.cat([repeat_edge_major(t, edges) for t in _groups(x)], dim=1))
    # channels-last images stay channels-last; volumes come contiguous (ops.primitives.depthwise_input)
    layout = torch.channels_last if channels_last and dims == 2 else torch.contiguous_format
    assert repeated.is_contiguous(memory_format=layout)
    conv_args = ((stride,) * dims, (1,) * dims, (1,) * dims)
    a, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    b, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = repeated_depthwise_conv(a, wa, *conv_args, K)
    pairs = zip(_groups(b), wb.chunk(K, dim=0), strict=True)  # group k's filters: rows k·E·C..
    expected = torch.cat([repeated_depthwise_conv(t, f, *conv_args) for t, f in pairs], dim=1)
    assert torch.allclose(got, expected, **TOL)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    _equal_grads(got, expected, [a, wa], [b, wb], grad)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_in_channel_groups_equals_the_groups_one_by_one(groups, channels_last, bias):
    """The same (grouped) 1×1 conv on each of K channel groups: a matmul over K times the rows when
    channels-last, a grouped conv of repeated filters otherwise; value and gradients as K convs."""
    g = torch.Generator().manual_seed(4)
    c, o = 4, 6
    x = _layout(torch.randn(2, K * c, 5, 3, generator=g, dtype=torch.float64), channels_last)
    w = torch.randn(o, c // groups, 1, 1, generator=g, dtype=torch.float64)
    bvec = torch.randn(o, generator=g, dtype=torch.float64) if bias else None
    a, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    got = pointwise_conv(a, wa, bvec, groups, channel_groups=K)
    b, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    expected = torch.cat([F.conv2d(t, wb, bvec, groups=groups) for t in _groups(b)], dim=1)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, **TOL)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    _equal_grads(got, expected, [a, wa], [b, wb], grad)


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("matmul", [False, True])
def test_a_module_conv_on_channel_groups_equals_the_module_on_each(kernel, matmul):
    """:func:`shared_module_conv` (the cell's preprocessing conv on the G resolutions at once)."""
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 5, kernel, padding=kernel // 2, bias=True).double()
    x = _layout(torch.randn(2, K * 4, 6, 7, dtype=torch.float64), True).requires_grad_()
    got = shared_module_conv(conv, x, K, matmul)
    expected = torch.cat([conv(t) for t in _groups(x)], dim=1)
    assert torch.allclose(got, expected, **TOL)
    grad = torch.randn(got.shape, dtype=torch.float64)
    for u, v in zip(
        torch.autograd.grad(got, [x, conv.weight, conv.bias], grad),
        torch.autograd.grad(expected, [x, conv.weight, conv.bias], grad),
        strict=True,
    ):
        assert torch.allclose(u, v, **TOL)


def test_the_supernet_takes_the_channel_grouped_path_where_it_applies(monkeypatch):
    """By default every node with two or more incoming resolutions runs its cell with them in the
    channels; switched off, or with partial channels, none does (so that the exactness tests of
    ``tests/test_perf_exactness.py`` compare the path they mean to)."""
    import autodeeplab.fast.cell as cell_module
    from autodeeplab.fast.supernet import build_supernet
    from autodeeplab.space.autodeeplab.supernet import SearchSpaceConfig
    from autodeeplab.space.autodeeplab.topology import incoming_edges

    calls: list[int] = []
    original = cell_module._channel_group_terms

    def counted(x, j, edges, weights, groups, execution):
        if j == 1:  # once per node: its h^{l-1}
            calls.append(groups)
        return original(x, j, edges, weights, groups, execution)

    monkeypatch.setattr(cell_module, "_channel_group_terms", counted)
    space = dict(filter_multiplier=2, num_layers=3, num_levels=3, num_blocks=2, stem_channels=(2, 2, 4))
    x = torch.randn(2, 3, 17, 17)
    expected = sorted(
        len(incoming_edges(layer, level, 3))
        for layer in range(1, 4)
        for level in range(3)
        if len(incoming_edges(layer, level, 3)) > 1
    )
    for execution, partial, used in [
        (ExecutionConfig(), 1, True),
        (ExecutionConfig(groups_in_channels=False), 1, False),
        (ExecutionConfig(), 2, False),
    ]:
        calls.clear()
        net = build_supernet(SearchSpaceConfig(**space, partial_channels=partial), 3, execution=execution)
        net(x)
        assert sorted(calls) == (expected if used else [])
    assert uses_channel_groups(ExecutionConfig(), 1, 1) is False  # one resolution: nothing to group
    assert uses_channel_groups(ExecutionConfig(repeat_separable_input=False), 1, 3) is False


@pytest.mark.parametrize("shape", [(2, 3 * 4, 5, 6), (2, 3 * 4, 3, 4, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_moving_the_groups_to_the_batch_axis_and_back(shape, channels_last):
    """The copy between the layouts stacks the K channel groups on the batch axis (group-major, as the
    batch layout does) in the input's memory format, and the opposite copy undoes it exactly."""
    from autodeeplab.fast.channel_groups import _regroup
    from autodeeplab.fast.pointwise import is_channels_last

    x = _layout(torch.randn(*shape, dtype=torch.float64), channels_last)
    batch = _regroup(x, K, to_batch_axis=True)
    assert torch.equal(batch, torch.cat(_groups(x), dim=0))
    assert is_channels_last(batch) == is_channels_last(x)
    back = _regroup(batch, K, to_batch_axis=False)
    assert torch.equal(back, x) and is_channels_last(back) == is_channels_last(x)


@pytest.mark.parametrize("spatial", [(9, 7), (5, 6, 4)])
def test_dense_convs_through_the_batch_axis_equal_each_group_alone_and_keep_only_the_input(spatial):
    """:func:`convs_on_the_batch_axis` (the atrous convs of a channel-grouped state): each result equals
    the library's conv of every group, both gradients too, and the backward keeps ``x`` (and the filters)
    only, not its batch-axis copy."""
    from autodeeplab.fast.channel_groups import convs_on_the_batch_axis
    from autodeeplab.fast.memory import SavedTensorCounter

    g = torch.Generator().manual_seed(6)
    dims, c = len(spatial), 3
    conv_type = nn.Conv2d if dims == 2 else nn.Conv3d
    likes = [conv_type(c, 4, 3, padding=2, dilation=2), conv_type(c, 2, 5, padding=4, dilation=2)]
    x = _layout(torch.randn(2, K * c, *spatial, generator=g, dtype=torch.float64), True)
    weights = [torch.randn(m.weight.shape, generator=g, dtype=torch.float64) for m in likes]
    a, wa = x.clone().requires_grad_(), [w.clone().requires_grad_() for w in weights]
    with SavedTensorCounter(exclude=wa) as counter:
        got = convs_on_the_batch_axis(a, K, wa, likes)
    b, wb = x.clone().requires_grad_(), [w.clone().requires_grad_() for w in weights]
    conv = F.conv2d if dims == 2 else F.conv3d
    expected = [
        torch.cat([conv(t, w, None, 1, m.padding, m.dilation) for t in _groups(b)], dim=1)
        for w, m in zip(wb, likes, strict=True)
    ]
    assert counter.total_bytes == x.numel() * x.element_size()  # x only
    grads = [torch.randn(e.shape, generator=g, dtype=torch.float64) for e in expected]
    for u, v in zip(got, expected, strict=True):
        assert u.shape == v.shape and torch.allclose(u, v, **TOL)
    got_grads = torch.autograd.grad(got, [a, *wa], grads)
    for u, v in zip(got_grads, torch.autograd.grad(expected, [b, *wb], grads), strict=True):
        assert torch.allclose(u, v, **TOL)


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_gradients_with_frozen_filters_come_from_a_stand_in_and_equal_the_librarys(channels_last):
    """An architecture step freezes the filters: the repeated depthwise conv and the batch-axis convs then
    give the input gradient from an uninitialised stand-in of the copied input (its shape and layout are
    all the convolution's input gradient reads), equal to the library's."""
    from autodeeplab.fast.channel_groups import convs_on_the_batch_axis

    g = torch.Generator().manual_seed(7)
    c = 3
    x = _layout(torch.randn(2, K * c, 9, 7, generator=g, dtype=torch.float64), channels_last)
    dw = torch.randn(K * 2 * c, 1, 5, 5, generator=g, dtype=torch.float64)  # frozen
    dense = torch.randn(4, c, 3, 3, generator=g, dtype=torch.float64)
    like = nn.Conv2d(c, 4, 3, padding=2, dilation=2)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = (
        repeated_depthwise_conv(a, dw, (1, 1), (2, 2), (1, 1), K).sum()
        + convs_on_the_batch_axis(a, K, [dense], [like])[0].square().sum()
    )
    repeated = torch.cat([repeat_edge_major(t, 2) for t in _groups(b)], dim=1)
    expected = F.conv2d(repeated, dw, None, 1, 2, 1, K * 2 * c).sum()
    expected = (
        expected + torch.cat([F.conv2d(t, dense, None, 1, 2, 2) for t in _groups(b)], dim=1).square().sum()
    )
    (u,) = torch.autograd.grad(got, [a])
    (v,) = torch.autograd.grad(expected, [b])
    assert torch.allclose(u, v, **TOL)


def test_copies_in_order_read_any_strides_and_lay_the_result_out_as_asked():
    """:mod:`autodeeplab.fast.strided`: the strides of each layout are the library's, and a regroup of a
    non-dense view (a gradient may come so) equals the groups concatenated, in a dense result."""
    from autodeeplab.fast.channel_groups import _regroup
    from autodeeplab.fast.strided import layout_strides

    for shape, layout in [
        ((2, 6, 5, 4), torch.contiguous_format),
        ((2, 6, 5, 4), torch.channels_last),
        ((2, 6, 3, 5, 4), torch.channels_last_3d),
    ]:
        assert layout_strides(shape, layout) == torch.empty(shape, memory_format=layout).stride()
    base = torch.randn(2, K * 4 * 2, 7, 9, dtype=torch.float64)
    x = base[:, ::2, 1:6, ::2]  # every other channel, cropped, every other column: no dense layout
    batch = _regroup(x, K, to_batch_axis=True)
    assert torch.equal(batch, torch.cat(_groups(x), dim=0)) and batch.is_contiguous()
    assert torch.equal(_regroup(batch, K, to_batch_axis=False), x)


def test_a_blocks_groups_weighted_by_beta_in_one_product_and_sum():
    """The node's Σ_g β_g · block_g over the channel groups: equal to the per-group sum (value and
    gradients), and channels-last in both directions."""
    from autodeeplab.fast.pointwise import to_rows
    from autodeeplab.fast.supernet import _group_weighted_sum

    g = torch.Generator().manual_seed(3)
    x = _layout(torch.randn(2, K * 4, 5, 6, generator=g, dtype=torch.float64), True).requires_grad_()
    beta = torch.rand(K, 1, generator=g, dtype=torch.float64, requires_grad=True)
    y = _group_weighted_sum(to_rows(x).unflatten(-1, (K, -1)), beta)
    expected = sum(beta[i, 0] * t for i, t in enumerate(_groups(x)))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, expected, **TOL)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, [x, beta], grad)
    for u, v in zip(got, torch.autograd.grad(expected, [x, beta], grad), strict=True):
        assert torch.allclose(u, v, **TOL)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_the_beta_weighted_sum_of_rows_not_in_memory_order_takes_the_per_group_form():
    """Rows of contiguous activations (or, untestable here, CUDA ones) take one product per group: the
    same values and gradients, and the result keeps the activations' layout."""
    from autodeeplab.fast.pointwise import to_rows
    from autodeeplab.fast.supernet import _group_weighted_sum

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, K * 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)  # contiguous
    beta = torch.rand(K, 1, generator=g, dtype=torch.float64, requires_grad=True)
    y = _group_weighted_sum(to_rows(x).unflatten(-1, (K, -1)), beta)
    expected = sum(beta[i, 0] * t for i, t in enumerate(_groups(x)))
    assert y.is_contiguous() and torch.allclose(y, expected, **TOL)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    for u, v in zip(
        torch.autograd.grad(y, [x, beta], grad), torch.autograd.grad(expected, [x, beta], grad), strict=True
    ):
        assert torch.allclose(u, v, **TOL)
