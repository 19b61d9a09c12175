"""The DiNTS supernet and found network: forward/backward in 2D and 3D, the contract, decoding to a network
that builds, uniform random topologies, and the memory factors against the saved-tensor counter."""

from __future__ import annotations

import collections

import pytest
import torch

from autodeeplab.fast.memory import SavedTensorCounter
from autodeeplab.nets.dints import DintsNet
from autodeeplab.space.contract import check_search_space
from autodeeplab.space.dints.arch import DintsArch
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import DintsSupernet, memory_cost

TINY = {"depths": 3, "blocks": 3, "channels": 4, "in_channels": 1, "num_classes": 3}


@pytest.mark.parametrize(("dims", "size"), [(2, (12, 10)), (3, (8, 10, 6)), (3, (7, 9, 5))])
def test_supernet_forward_backward_and_contract(dims, size):
    torch.manual_seed(0)
    net = DintsSupernet(DintsShape(**TINY, spatial_dims=dims))
    check_search_space(net)
    x = torch.randn(2, 1, *size)
    out = net(x)
    assert out.shape == (2, 3, *size)
    loss = out.square().mean() + sum(net.arch_loss_terms().values())
    loss.backward()
    assert net.edge_logits.grad.abs().sum() > 0 and net.op_logits.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weight_parameters())
    arch = net.decode()
    assert DintsArch.from_json(arch.to_json()) == arch  # valid by construction
    found = DintsNet(arch, DintsShape(**TINY, spatial_dims=dims))
    found_out = found(x)
    assert found_out.shape == (2, 3, *size)
    found_out.mean().backward()
    record = net.arch_record()
    assert 0 < record["memory_fraction"] <= 1 and len(record["edge_probabilities"]) == TINY["blocks"]


def test_random_topologies_are_valid_and_uniform_over_chains():
    shape = DintsShape(depths=2, blocks=2, channels=2, spatial_dims=2)
    net = DintsSupernet(shape)
    generator = torch.Generator().manual_seed(0)
    seen = collections.Counter(
        tuple(tuple(e[:2] for e in b) for b in net.random_architecture(generator).blocks) for _ in range(3000)
    )
    # Valid chains of 2 blocks at 2 depths, by enumeration: pattern pairs with I(c1) = O(c0).
    topo = net.topology
    valid = sum(topo.inputs[c1] == topo.outputs[c0] for c0 in range(15) for c1 in range(15))
    assert len(seen) == valid
    expected = 3000 / valid
    assert all(abs(n - expected) < 5 * expected**0.5 for n in seen.values())  # about 5 sigma


@pytest.mark.parametrize("dims", [2, 3])
def test_memory_factors_match_the_saved_tensor_counter_on_found_networks(dims):
    """The cost table's bytes for a decoded network's edges equal what autograd keeps for them, within 10%."""
    shape = DintsShape(depths=3, blocks=3, channels=4, spatial_dims=dims, in_channels=1, num_classes=2)
    size = (16, 16, 16)[:dims]
    net = DintsSupernet(shape, probe_size=size)
    cost = memory_cost(shape, net.op_names, size)
    for seed in range(3):
        arch = net.random_architecture(torch.Generator().manual_seed(seed))
        found = DintsNet(arch, shape)
        predicted = 0.0
        index = {e: i for i, e in enumerate(net.topology.edges)}
        for block in arch.blocks:
            for a, z, op in block:
                predicted += float(cost[index[(a, z)], net.op_names.index(op)])
        # Count the blocks alone: the stem's outputs as leaves, the cells' forward under the counter.
        x = torch.randn(1, 1, *size)
        with torch.no_grad():
            nodes = [
                stem(
                    x
                    if d == 0
                    else torch.nn.functional.interpolate(
                        x,
                        size=tuple((n - 1) // 2**d + 1 for n in size),
                        mode="bilinear" if dims == 2 else "trilinear",
                        align_corners=True,
                    )
                )
                for d, stem in enumerate(found.body.stems)
            ]
        nodes = [n.requires_grad_(True) for n in nodes]
        sizes = shape.sizes(size)
        with SavedTensorCounter(exclude=found.parameters()) as counter:
            for block in found.body.cells:
                new = [None] * shape.depths
                for key, cell in block.items():
                    a, z = net.topology.edges[int(key)]
                    out = cell(nodes[a], sizes[z])
                    new[z] = out if new[z] is None else new[z] + out
                nodes = new
        assert counter.total_bytes == pytest.approx(predicted, rel=0.10)


def test_random_architectures_of_the_full_space_and_exact_big_draws():
    """At 4 depths × 12 blocks the number of valid chains is far beyond 64 bits; the draw stays exact."""
    from autodeeplab.space.dints.supernet import random_below

    net = DintsSupernet(DintsShape(depths=4, blocks=12, channels=1, spatial_dims=3))
    generator = torch.Generator().manual_seed(0)
    arch = net.random_architecture(generator)
    assert (arch.depths, arch.num_blocks) == (4, 12)
    big = 3**100 + 7
    draws = [random_below(big, generator) for _ in range(200)]
    assert all(0 <= d < big for d in draws) and max(draws) > big // 2 > min(draws)
    small = collections.Counter(random_below(3, generator) for _ in range(3000))
    assert sorted(small) == [0, 1, 2] and all(abs(n - 1000) < 5 * 1000**0.5 for n in small.values())
