"""Every exact speed/memory switch, alone and with any other, changes no result: outputs, gradients (weights,
α, β), BN running statistics and evaluation outputs after training forwards equal the reference evaluation
(:class:`SearchNetwork`, every op module called as it is, one incoming resolution at a time).

The supernet comparisons run in float64: there a reordered but exact computation agrees to ~1e-12, while
float32 rounding, amplified by batch norm over tiny batches, would blur a real mistake into noise."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
from torch import nn

from autodeeplab.fast.cell import mixed_op
from autodeeplab.fast.execution import ExecutionConfig, reference_switches
from autodeeplab.fast.grouped_bn import batch_norm
from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.fast.pooling import max_pool_saving_input
from autodeeplab.fast.supernet import build_supernet
from autodeeplab.space.autodeeplab.cell import MixedOp, channel_shuffle
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

OFF = reference_switches()
REFERENCE = ExecutionConfig(**OFF)
TOL = {"atol": 1e-9, "rtol": 1e-7}

FACTORS: dict[str, tuple[object, object]] = {
    **{name: (False, True) for name, value in OFF.items() if value is False},
    "memory_format": ("contiguous", "channels_last"),
    "checkpoint_cells": (False, True),
    "space.partial_channels": (1, 2),
    "space.affine": (False, True),
}
"""Everything a search can turn on or off without changing the result: each execution switch, and two
search-space settings that change which code the switches run (partial channels slice and shuffle every
edge; affine BNs have the parameters that α folds into) → (its value in the reference, the other value)."""


def settings(base: str, toggled: tuple[str, ...]) -> tuple[dict, dict]:
    """(execution, space) overrides: ``base`` (``reference``: every switch off; ``defaults``: as shipped)
    with the ``toggled`` factors set to their other value."""
    execution: dict = dict(OFF) if base == "reference" else {}
    space: dict = {}
    for name in toggled:
        reference, other = FACTORS[name]
        field = name.removeprefix("space.")
        if base == "reference":
            value = other
        else:  # away from the shipped default: to the reference's value, or the other one if equal
            default = getattr(tiny_space() if name.startswith("space.") else ExecutionConfig(), field)
            value = reference if default != reference else other
        (space if name.startswith("space.") else execution)[field] = value
    return execution, space


FULL = {"num_layers": 3, "num_levels": 3}
"""The base settings and each factor alone: 8 nodes, node (3, 1) with three incoming resolutions, h^{l-2}
from the stem resized at (2, 1) and (2, 2), from a cell in layer 3."""
PAIRS = {"num_layers": 2, "num_levels": 2}
"""Each pair of factors: 4 nodes of up to two incoming resolutions, h^{l-2} from the stem (resized at
(2, 1)); a third of the time, for the 132 pairs."""


def combinations(base: str) -> list:
    """The ``base`` itself and each factor toggled alone (on :data:`FULL`), each pair (on :data:`PAIRS`)."""
    alone = [()] + [(f,) for f in FACTORS]
    pairs = list(itertools.combinations(FACTORS, 2))
    return [
        pytest.param(base, c, shape, id=f"{base}:{'+'.join(c) or 'as is'}")
        for chosen, shape in ((alone, FULL), (pairs, PAIRS))
        for c in chosen
    ]


def tiny_space(**kw) -> SearchSpaceConfig:
    """F = 2 (partial channels 2 still possible), B = 2 (fused calls of 2 edges and of 1), a tiny stem;
    the shape of :data:`FULL` unless told."""
    base = dict(filter_multiplier=2, num_layers=3, num_levels=3, num_blocks=2, stem_channels=(2, 2, 4))
    return SearchSpaceConfig(**{**base, **kw})


def make_reference(space: SearchSpaceConfig) -> SearchNetwork:
    torch.manual_seed(0)
    net = SearchNetwork(space, num_classes=3)
    with torch.no_grad():  # away from the near-uniform start, so that a wrong weighting would show
        net.alpha.normal_()
        net.beta.normal_()
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return net.double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 17, 21)  # odd and unequal sides: ceil() at every stride, no transposition hides
    return [
        (
            torch.randn(*shape, generator=g, dtype=torch.float64),
            torch.randint(0, 3, shape[:1] + shape[2:], generator=g),
        )
        for _ in range(2)
    ]


@functools.cache
def named(net: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, torch.Tensor]]]:
    """The parameters and the buffers of ``net`` by name, listed once (each walk visits ~4,000 modules)."""
    return list(net.named_parameters()), list(net.named_buffers())


def tensors(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer by name: the whole state a forward reads."""
    return [*named(net)[0], *named(net)[1]]


Results = dict[str, tuple[list[str], list[int], torch.Tensor]]


def collect(items: list[tuple[str, torch.Tensor | None]]) -> tuple[list[str], list[int], torch.Tensor]:
    """(names, sizes, all values as one float64 vector): one comparison per kind keeps 160 cases fast. A
    missing gradient is a NaN, which equals nothing."""
    values = [torch.full((1,), torch.nan) if t is None else t.detach().double().flatten() for _, t in items]
    return [name for name, _ in items], [v.numel() for v in values], torch.cat(values)


def run(net: nn.Module) -> Results:
    """Everything compared, by kind: a training forward and backward, a second training forward (the
    running statistics move again), an evaluation forward with the running statistics."""
    (x1, y1), (x2, _) = batches()
    parameters, buffers = named(net)
    results = {}
    net.train()
    out = net(x1)
    nn.functional.cross_entropy(out, y1).backward()
    results["training output 1"] = collect([("logits", out)])
    results["gradients"] = collect([(name, p.grad) for name, p in parameters])
    results["buffers after 1 forward"] = collect(buffers)
    results["training output 2"] = collect([("logits", net(x2))])
    results["buffers after 2 forwards"] = collect(buffers)
    net.eval()
    with torch.no_grad():
        results["evaluation output"] = collect([("logits", net(x1))])
    return results


def assert_same_results(got: Results, expected: Results) -> None:
    for kind, (names, sizes, values) in expected.items():
        got_names, _, got_values = got[kind]
        assert got_names == names, kind
        if not torch.allclose(got_values, values, **TOL):  # name the tensors that differ
            pairs = zip(got_values.split(sizes), values.split(sizes), strict=True)
            differing = [
                f"{name} (by {(a - b).abs().max().item():.2g})"
                for name, (a, b) in zip(names, pairs, strict=True)
                if not torch.allclose(a, b, **TOL)
            ]
            raise AssertionError(f"{kind}: {len(differing)} differ: {', '.join(differing[:5])}")


@functools.cache
def reference_run(**space):
    """The reference's starting state (tensor copies) and results for one search space, computed once."""
    net = make_reference(tiny_space(**space))
    state = [t.detach().clone() for _, t in tensors(net)]
    return state, run(net)


@functools.cache
def fast_net(**space) -> SearchNetwork:
    """One supernet per search space, reused by every case: building a supernet costs more than a case."""
    return build_supernet(tiny_space(**space), 3).double()


def restore(net: nn.Module, state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for (_, t), value in zip(tensors(net), state, strict=True):
            t.copy_(value)
    for _, p in named(net)[0]:
        p.grad = None


@pytest.mark.parametrize(("base", "toggled", "shape"), combinations("reference") + combinations("defaults"))
def test_switches_alone_and_in_pairs_change_no_result(base, toggled, shape):
    execution, space = settings(base, toggled)
    state, expected = reference_run(**space, **shape)
    net = fast_net(**space, **shape)
    restore(net, state)
    net.execution = ExecutionConfig(**execution)
    assert_same_results(run(net), expected)


def test_checkpointing_only_some_levels_changes_no_result():
    state, expected = reference_run(**FULL)
    net = fast_net(**FULL)
    restore(net, state)
    net.execution = ExecutionConfig(checkpoint_cells=True, checkpoint_levels=(0, 2))
    assert_same_results(run(net), expected)


@pytest.mark.parametrize("levels", [1, 2])
def test_fewer_levels_change_no_result(levels):
    ref = make_reference(tiny_space(num_levels=levels))
    net = build_supernet(tiny_space(num_levels=levels), 3).double()
    net.load_state_dict(ref.state_dict())
    assert_same_results(run(net), run(ref))


def test_volumes_change_no_result():
    space = dict(spatial_dims=3, num_layers=2, num_levels=2)
    ref = make_reference(tiny_space(**space))
    net = build_supernet(tiny_space(**space), 3, in_channels=3).double()
    net.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(2, 3, 9, 7, 11, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (2, 9, 7, 11), generator=g),
    )
    for model in (ref, net):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, **TOL), name
    for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers(), strict=True):
        assert torch.allclose(b.double(), c.double(), **TOL), name
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ref.eval()(x), **TOL)


@pytest.mark.parametrize(
    ("spatial", "execution"),
    [((17, 21), {}), ((17, 21), {"memory_format": "contiguous"}), ((9, 7, 11), {})],  # 3D: two levels
    ids=["2d", "2d-contiguous", "3d"],
)
def test_a_batch_of_one_changes_no_result(spatial, execution):
    """N = 1 (volumes, a rank's shard): the fused sums' gradients once reached the batch norms in a
    stride of the size-1 batch axis that torch 2.13's CPU batch-norm backward misreads (outputs exact,
    gradients off by up to 0.7)."""
    space = tiny_space(spatial_dims=len(spatial), num_layers=2, num_levels=3 if len(spatial) == 2 else 2)
    ref = make_reference(space)
    net = build_supernet(space, 3, in_channels=3, execution=ExecutionConfig(**execution)).double()
    net.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, *spatial, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (1, *spatial), generator=g)
    outs = []
    for model in (ref, net):
        model.train()
        outs.append(model(x))
        nn.functional.cross_entropy(outs[-1], y).backward()
    assert torch.allclose(outs[1], outs[0], **TOL)
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, **TOL), name


def test_the_reference_switches_evaluate_exactly_the_reference():
    """Not merely close: with every switch off, build_supernet's forward calls the reference node."""
    ref = make_reference(tiny_space())
    net = build_supernet(tiny_space(), 3, execution=REFERENCE).double()
    net.load_state_dict(ref.state_dict())
    assert net.execution is REFERENCE
    x, y = batches()[0]
    outs = []
    for model in (ref, net):
        model.train()
        outs.append(model(x))
        nn.functional.cross_entropy(outs[-1], y).backward()
    assert torch.equal(outs[0], outs[1])
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_checkpointing_updates_running_stats_once():
    state, _ = reference_run(**FULL)
    net = fast_net(**FULL)
    restore(net, state)
    net.execution = ExecutionConfig(checkpoint_cells=True)
    x, y = batches()[0]
    nn.functional.cross_entropy(net.train()(x), y).backward()  # the backward recomputes every node
    bn = net.cells["3_1"].edges[0].ops[0][1]
    assert int(bn.num_batches_tracked) == 3  # three incoming resolutions, one update each


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_with_a_folded_scale_equals_the_product(layout, affine):
    """``batch_norm(x, bn, scale=s)`` = ``s · bn(x)``, gradients included. An affine-free BN gets ``s`` as
    its weight, which must be a real vector: a stride-0 expansion made torch's channels-last backward
    return a wrong input gradient."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, affine=affine).double()
    ref = copy.deepcopy(bn)
    x = torch.randn(6, 4, 5, 3, dtype=torch.float64).contiguous(memory_format=layout)
    g = torch.randn(6, 4, 5, 3, dtype=torch.float64).contiguous(memory_format=layout)
    results = []
    for fold, module in ((True, bn), (False, ref)):
        xs, s = x.clone().requires_grad_(), torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        y = (
            batch_norm(xs, module, groups=2, scale=s)
            if fold
            else torch.cat([s * module(c) for c in xs.chunk(2)])
        )
        (y * g).sum().backward()
        results.append((y, xs.grad, s.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, **TOL)


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


def mixed_op_run(op: MixedOp, x, logits, execution: ExecutionConfig | None):
    """(output, d/dx, d/dα logits, bytes saved for the backward); ``execution`` None: ``op(x, w)``."""
    x, logits = x.clone().requires_grad_(), logits.clone().requires_grad_()
    with SavedTensorCounter(exclude=[*op.parameters(), *op.buffers()]) as counter:
        weights = torch.softmax(logits, 0)
        out = op(x, weights) if execution is None else mixed_op(op, x, weights, execution)
    out.square().sum().backward()
    return out.detach(), x.grad, logits.grad, counter.total_bytes


def test_mixed_op_fast_path_equals_reference_and_saves_less():
    torch.manual_seed(0)
    op = MixedOp(4, affine=True).double().train()
    x, logits = torch.randn(2, 4, 11, 11, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    expected = mixed_op_run(copy.deepcopy(op), x, logits, None)
    names = ("share_edge_relu", "pool_without_indices", "fold_alpha_into_bn")
    saved = {}
    for flags in [(True, True, True), (False, False, False), (True, False, False), (False, False, True)]:
        execution = ExecutionConfig(**{**OFF, **dict(zip(names, flags, strict=True))})
        got = mixed_op_run(copy.deepcopy(op), x, logits, execution)
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
