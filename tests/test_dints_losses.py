"""DiNTS's architecture-step terms against enumerations of the patterns, and their directions."""

from __future__ import annotations

import math

import pytest
import torch

from autodeeplab.space.dints.losses import (
    budget_loss,
    edge_entropy,
    edge_weights,
    expected_memory,
    full_memory,
    op_entropy,
    topology_loss,
)
from autodeeplab.space.dints.topology import Topology, pattern_log_probs


def setting(depths: int, blocks: int = 3, ops: int = 3, seed: int = 0):
    topo = Topology(depths)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(blocks, topo.num_edges, generator=g, dtype=torch.float64)
    w = torch.randn(blocks, topo.num_edges, ops, generator=g, dtype=torch.float64)
    cost = torch.rand(topo.num_edges, ops, generator=g, dtype=torch.float64) + 0.1
    return topo, a, w, cost


@pytest.mark.parametrize("depths", [2, 3])
def test_edge_weights_are_the_marginals_of_the_pattern_distribution(depths):
    topo, a, _, _ = setting(depths)
    probs = pattern_log_probs(a, topo).exp()
    bits = torch.as_tensor(topo.pattern_bits, dtype=torch.float64)
    torch.testing.assert_close(edge_weights(a), probs @ bits)


@pytest.mark.parametrize("depths", [2, 3])
def test_expected_memory_is_the_mean_over_patterns_of_their_memory(depths):
    topo, a, w, cost = setting(depths)
    probs = pattern_log_probs(a, topo).exp()
    per_edge = (torch.softmax(w, dim=-1) * cost).sum(dim=-1)  # [B, E]
    enumerated = sum(
        probs[b, c] * per_edge[b][torch.as_tensor(topo.pattern_bits[c])].sum()
        for b in range(a.shape[0])
        for c in range(topo.num_patterns)
    )
    torch.testing.assert_close(expected_memory(a, w, cost), enumerated)
    torch.testing.assert_close(full_memory(w, cost), per_edge.sum())


def test_entropies_vanish_when_decided_and_peak_when_undecided():
    assert edge_entropy(torch.zeros(2, 4)).item() == pytest.approx(math.log(2))
    assert edge_entropy(torch.tensor([[60.0, -60.0]])).item() == pytest.approx(0.0, abs=1e-20)
    assert op_entropy(torch.zeros(2, 4, 5)).item() == pytest.approx(math.log(5))
    assert op_entropy(torch.tensor([[[90.0, 0.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-30)


def blockwise_sets(topo: Topology, probs: torch.Tensor, which: str) -> torch.Tensor:
    sets = topo.outputs if which == "out" else topo.inputs
    table = torch.zeros(probs.shape[0], 2**topo.depths - 1, dtype=probs.dtype)
    for b in range(probs.shape[0]):
        for c in range(topo.num_patterns):
            table[b, sets[c] - 1] += probs[b, c]
    return table


@pytest.mark.parametrize("depths", [2, 3])
def test_topology_loss_by_enumeration(depths):
    topo, a, _, _ = setting(depths, blocks=4)
    probs = pattern_log_probs(a, topo).exp()
    q, p = blockwise_sets(topo, probs, "out")[:-1], blockwise_sets(topo, probs, "in")[1:]
    want = -(q * torch.log(p + 1e-5) + (1 - q) * torch.log(1 - p + 1e-5)).sum()
    torch.testing.assert_close(topology_loss(a, topo), want)


def test_topology_loss_is_small_for_a_chain_that_fits_and_large_for_one_that_does_not():
    topo = Topology(2)  # edges: 0>0, 1>0, 0>1, 1>1
    sure = 30.0
    fits = torch.tensor([[sure, -sure, sure, -sure], [sure, sure, -sure, -sure]])  # writes {0,1}, reads {0,1}
    breaks = torch.tensor([[sure, -sure, -sure, -sure], [-sure, sure, -sure, -sure]])  # writes {0}, reads {1}
    assert topology_loss(fits, topo).item() < 1e-3
    assert topology_loss(breaks, topo).item() > 10


def test_lowering_the_budget_lowers_the_memory_the_search_settles_on():
    topo, a0, w, cost = setting(3, blocks=4, seed=3)
    ratios = []
    for budget in (0.2, 0.5, 0.8):
        a = a0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([a], lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            budget_loss(a, w, cost, budget).backward()
            optimizer.step()
        with torch.no_grad():
            ratios.append((expected_memory(a, w, cost) / full_memory(w, cost)).item())
    assert ratios == sorted(ratios)
    for ratio, budget in zip(ratios, (0.2, 0.5, 0.8), strict=True):
        assert ratio == pytest.approx(budget, abs=0.02)
