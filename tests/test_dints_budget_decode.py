"""DiNTS decoding within a memory budget: feasible, Lagrangian-optimal by enumeration, and what the supernet,
its record and ``decode`` do with it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from autodeeplab.space.dints.decode import best_chain, budgeted_chain, decode_arch, decode_record, edge_costs
from autodeeplab.space.dints.network import DintsShape
from autodeeplab.space.dints.supernet import DintsSupernet
from autodeeplab.space.dints.topology import Topology, pattern_log_probs


def valid_chains(topo: Topology, blocks: int):
    for chain in itertools.product(range(topo.num_patterns), repeat=blocks):
        if all(topo.inputs[chain[b + 1]] == topo.outputs[chain[b]] for b in range(blocks - 1)):
            yield chain


def total(table: np.ndarray, chain) -> float:
    return float(sum(table[b, c] for b, c in enumerate(chain)))


@pytest.mark.parametrize(("depths", "blocks"), [(2, 3), (3, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.1, 0.4, 0.7, 1.0])
def test_the_chain_fits_and_nothing_cheaper_is_more_probable(depths, blocks, seed, share):
    topo = Topology(depths)
    rng = np.random.default_rng(seed)
    log_p = pattern_log_probs(torch.as_tensor(rng.normal(0, 2, (blocks, topo.num_edges))), topo).numpy()
    edge_cost = rng.uniform(0.2, 1.0, (blocks, topo.num_edges))
    edge_cost /= edge_cost.sum()  # fractions of every edge on, like the supernet's
    costs = edge_cost @ topo.pattern_bits.T.astype(float)
    chains = list(valid_chains(topo, blocks))
    cheapest, best_cost = min(total(costs, c) for c in chains), total(costs, best_chain(log_p, topo)[0])
    limit = cheapest + share * (best_cost - cheapest)  # from the cheapest chain to the unconstrained one's
    chain, lam = budgeted_chain(log_p, costs, limit, topo)
    assert np.isfinite(lam) and total(costs, chain) <= limit
    assert tuple(chain) in chains
    # Lagrangian optimality: no valid chain that costs at most as much is more probable.
    mine = total(log_p, chain)
    assert all(total(log_p, c) <= mine + 1e-9 for c in chains if total(costs, c) <= total(costs, chain))
    # Without a budget problem it is the plain decode.
    best, _ = best_chain(log_p, topo)
    if total(costs, best) <= limit:
        assert chain == best and lam == 0.0
    else:
        assert lam > 0 and total(log_p, chain) < total(log_p, best)


def test_a_budget_nothing_fits_gives_the_cheapest_chain():
    topo, blocks = Topology(2), 3
    rng = np.random.default_rng(3)
    log_p = pattern_log_probs(torch.as_tensor(rng.normal(0, 2, (blocks, topo.num_edges))), topo).numpy()
    costs = rng.uniform(0.1, 1.0, (blocks, topo.num_edges)) @ topo.pattern_bits.T.astype(float)
    chain, lam = budgeted_chain(log_p, costs, 0.0, topo)
    assert lam == float("inf")
    assert total(costs, chain) == pytest.approx(min(total(costs, c) for c in valid_chains(topo, blocks)))
    with pytest.raises(ValueError, match="costs must be"):
        budgeted_chain(log_p, -costs, 0.5, topo)


def test_edge_costs_pick_each_edges_op():
    cost = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [E, K]
    ops = np.array([[0, 1, 1], [1, 0, 0]])  # [B, E]
    assert edge_costs(ops, cost).tolist() == [[1.0, 4.0, 6.0], [2.0, 3.0, 5.0]]
    per_block = np.stack([cost, 10 * cost])  # [B, E, K]
    assert edge_costs(ops, per_block).tolist() == [[1.0, 4.0, 6.0], [20.0, 30.0, 50.0]]


@pytest.mark.parametrize("budget", [0.2, 0.5])
def test_the_supernet_decodes_within_its_budget_and_its_record_reproduces_it(budget):
    torch.manual_seed(0)
    net = DintsSupernet(DintsShape(3, 4, 4, 2, "batch", 1, 2), memory_budget=budget)
    with torch.no_grad():  # every edge likely on: the unconstrained decode uses nearly all the memory
        net.edge_logits.copy_(3.0 + torch.randn_like(net.edge_logits))
        net.op_logits.copy_(torch.randn_like(net.op_logits))
    record = net.arch_record()
    assert record["decoded_memory_fraction"] <= budget
    free = decode_arch(net.edge_logits, net.op_logits, net.op_set)
    full = float(record["decoded_memory_fraction"]) / float(net.decoded_memory(net.decode()))
    assert float(net.decoded_memory(free)) * full > budget  # the budget changed the answer
    assert decode_record(record) == net.decode()
    net.decode_within_budget = False
    assert net.decode() == free
    old = {k: v for k, v in net.arch_record().items() if k not in ("decode_within_budget", "memory_cost")}
    assert decode_record(old) == free  # records from before the option decoded without the budget


def test_a_record_with_a_bad_memory_cost_is_named():
    from autodeeplab.errors import GenotypeError

    net = DintsSupernet(DintsShape(2, 2, 4, 2, "batch", 1, 2))
    record = net.arch_record()
    for bad in (None, [[1.0]], [[-1.0] * len(net.op_names)] * net.topology.num_edges):
        with pytest.raises(GenotypeError, match="memory_cost"):
            decode_record({**record, "memory_cost": bad})
    with pytest.raises(GenotypeError, match="decode_within_budget"):
        decode_record({**record, "decode_within_budget": "yes"})
