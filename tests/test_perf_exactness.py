"""Every exact speed/memory switch changes no result: outputs, gradients and BN running statistics equal the
reference evaluation (each op module called as it is, one incoming resolution at a time).

The supernet comparisons run in float64: there a reordered but exact computation agrees to ~1e-12, while
float32 rounding, amplified by batch norm over tiny batches, would blur a real mistake into noise."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autodeeplab.fast.execution import ExecutionConfig, reference_switches
from autodeeplab.fast.grouped_bn import batch_norm
from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.ops.primitives import max_pool_saving_input
from autodeeplab.space.autodeeplab.cell import EdgeOptions, MixedOp, channel_shuffle
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

OFF = reference_switches()
REFERENCE = ExecutionConfig(**OFF)
TOL = {"atol": 1e-9, "rtol": 1e-7}


def tiny_space(**kw) -> SearchSpaceConfig:
    base = dict(filter_multiplier=2, num_layers=4, num_blocks=3, stem_channels=(4, 4, 8), affine=True)
    return SearchSpaceConfig(**{**base, **kw})


def make_reference(space: SearchSpaceConfig | None = None) -> SearchNetwork:
    torch.manual_seed(0)
    net = SearchNetwork(space or tiny_space(), num_classes=3, execution=REFERENCE)
    with torch.no_grad():  # away from the near-uniform start, so that a wrong weighting would show
        net.alpha.normal_()
        net.beta.normal_()
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return net.double()


def train_step(net: SearchNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net.train()
    out = net(x)
    nn.functional.cross_entropy(out, y).backward()
    return out.detach()


def assert_same_state(net: SearchNetwork, ref: SearchNetwork) -> None:
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, **TOL), f"gradient of {name}"
    for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers(), strict=True):
        assert torch.allclose(b.double(), c.double(), **TOL), f"buffer {name}"


SWITCHES = {
    "all defaults": {},
    "batched nodes only": {**OFF, "batch_node_inputs": True},
    "fused edges only": {**OFF, "fuse_edges": True},
    "partial channels fused": {"space": {"partial_channels": 2}},
    "partial channels unfused": {"space": {"partial_channels": 2}, "fuse_edges": False},
    "shared relu only": {**OFF, "share_edge_relu": True},
    "pool without indices only": {**OFF, "pool_without_indices": True},
    "alpha folded into bn only": {**OFF, "fold_alpha_into_bn": True},
    "channels last only": {**OFF, "memory_format": "channels_last"},
    "1x1 convs as matmuls only": {**OFF, "memory_format": "channels_last", "pointwise_as_matmul": True},
    "flipped depthwise gradient only": {**OFF, "fuse_edges": True, "depthwise_flipped_grad": True},
    "batched running stats only": {**OFF, "batch_node_inputs": True, "batch_running_stats": True},
    "checkpointing only": {**OFF, "checkpoint_cells": True},
    "all with checkpointing": {"checkpoint_cells": True},
    "checkpointing levels 0 and 2": {"checkpoint_cells": True, "checkpoint_levels": (0, 2)},
}


# Every switch with the search default (mixed-op BNs without affine parameters); the switches that touch
# the BN parameters (folding α into them, stacking them across edges) also with affine BNs. Running all
# 2 x 12 combinations would double the suite's slowest file for no extra code path.
AFFINE_TOO = ("all defaults", "fused edges only", "alpha folded into bn only", "all with checkpointing")
CASES = [pytest.param(s, False, id=f"{name}-no affine") for name, s in SWITCHES.items()] + [
    pytest.param(SWITCHES[name], True, id=f"{name}-affine") for name in AFFINE_TOO
]


@pytest.mark.parametrize(("switches", "affine"), CASES)
def test_switch_changes_no_result(switches, affine):
    switches = dict(switches)
    ref = make_reference(tiny_space(affine=affine, **switches.pop("space", {})))
    if not affine:  # the mixed ops' BNs really have no parameters (their pools' BNs never do)
        assert ref.cells["1_0"].edges[0].ops[3][-1].weight is None
    net = copy.deepcopy(ref)
    net.execution = ExecutionConfig(**switches)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 37, 41, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 37, 41), generator=g)
    for _ in range(2):  # the second step sees running statistics updated by the first
        ref.zero_grad()
        net.zero_grad()
        out_ref, out = train_step(ref, x, y), train_step(net, x, y)
        assert torch.allclose(out, out_ref, **TOL)
        assert_same_state(net, ref)
    ref.eval()
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), **TOL)  # evaluation mode uses the running statistics


def test_checkpointing_updates_running_stats_once():
    ref = make_reference()
    net = copy.deepcopy(ref)
    net.execution = ExecutionConfig(checkpoint_cells=True)
    x, y = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randint(0, 3, (2, 32, 32))
    train_step(ref, x, y)
    train_step(net, x, y)  # the backward recomputes every node in training mode
    bn = net.cells["3_1"].edges[0].ops[0][1]
    assert int(bn.num_batches_tracked) == 3  # three incoming resolutions, one update each
    assert_same_state(net, ref)


def test_grouped_batch_norm_equals_sequential_calls():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    ref = copy.deepcopy(bn)
    x = (torch.randn(6, 5, 7, 9) * 3 + 1).to(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(6, 5, 7, 9)
    out = batch_norm(a, bn, groups=3)
    expected = torch.cat([ref(chunk) for chunk in b.chunk(3)])
    (out * g).sum().backward()
    (expected * g).sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert torch.allclose(bn.weight.grad, ref.weight.grad, atol=1e-4)
    assert torch.allclose(bn.bias.grad, ref.bias.grad, atol=1e-4)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3
    assert out.is_contiguous(memory_format=torch.channels_last)  # no silent layout change


def test_shared_input_updates_running_stats_per_repeat():
    bn, ref = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(2, 3, 5, 5) + 2
    out = batch_norm(x, bn, repeats=3)
    for _ in range(3):
        expected = ref(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3


def test_max_pool_without_indices_has_the_same_gradient_and_saves_less():
    pool = nn.MaxPool2d(3, 1, 1)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    g = torch.randn(2, 4, 9, 9)
    (pool(x) * g).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = max_pool_saving_input(x, pool)
    (y * g).sum().backward()
    assert torch.equal(x.grad, expected)
    assert [t.dtype for t in saved] == [torch.float32]  # the input only, no int64 indices


def mixed_op_run(op, x, logits, options):
    x, logits = x.clone().requires_grad_(), logits.clone().requires_grad_()
    with SavedTensorCounter(exclude=[*op.parameters(), *op.buffers()]) as counter:
        out = op(x, torch.softmax(logits, 0), options)
    out.square().sum().backward()
    return out.detach(), x.grad, logits.grad, counter.total_bytes


def test_mixed_op_fast_path_equals_reference_and_saves_less():
    torch.manual_seed(0)
    op = MixedOp(4, affine=True).double().train()
    x, logits = torch.randn(2, 4, 11, 11, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    expected = mixed_op_run(copy.deepcopy(op), x, logits, None)
    saved = {}
    for flags in [(True, True, True), (False, False, False), (True, False, False), (False, False, True)]:
        got = mixed_op_run(copy.deepcopy(op), x, logits, EdgeOptions(*flags))
        for a, b in zip(got[:3], expected[:3], strict=True):
            assert torch.allclose(a, b, **TOL)
        saved[flags] = got[3]
    unit = x.numel() * x.element_size()  # one activation of the edge's size
    assert saved[(False, False, False)] == expected[3]
    assert saved[(True, False, False)] == expected[3] - 3 * unit  # 4 ReLU outputs → 1
    # the 6 BN outputs weighted by α are not kept; the BNs keep their α-scaled affine vectors instead
    # ([C] each: a few bytes, not activations)
    scaled_affine = 6 * 2 * x.shape[1] * x.element_size()
    assert expected[3] - 6 * unit <= saved[(False, False, True)] <= expected[3] - 6 * unit + scaled_affine
    assert saved[(True, True, True)] < saved[(True, False, False)] - 6 * unit  # and no int64 indices


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
