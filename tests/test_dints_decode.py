"""DiNTS topology: patterns and their probabilities, and decoding equal to brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from autodeeplab.space.dints.decode import best_chain
from autodeeplab.space.dints.topology import Topology, pattern_log_probs


def test_edges_of_three_depths_by_hand():
    topo = Topology(3)
    assert topo.edges == ((0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 2))
    assert topo.num_edges == 3 * 3 - 2 and topo.num_patterns == 127
    # Pattern 0 is edge 0 alone (0 -> 0); pattern 2**4 - 1 - 1 = 14 is edges 1, 2, 3 (1->0, 0->1, 1->1).
    assert topo.inputs[0] == 0b001 and topo.outputs[0] == 0b001
    assert topo.inputs[14] == 0b011 and topo.outputs[14] == 0b011
    assert topo.inputs[2**4 - 1] == 0b100 and topo.outputs[2**4 - 1] == 0b010  # edge 4 alone: 2 -> 1 (up)


@pytest.mark.parametrize("depths", [1, 2, 3, 4])
def test_pattern_probabilities_sum_to_one_and_match_the_product_formula(depths):
    topo = Topology(depths)
    torch.manual_seed(depths)
    logits = torch.randn(3, topo.num_edges, dtype=torch.float64) * 3
    log_p = pattern_log_probs(logits, topo)
    assert log_p.shape == (3, topo.num_patterns)
    torch.testing.assert_close(log_p.exp().sum(dim=1), torch.ones(3, dtype=torch.float64))
    eta = torch.sigmoid(logits)
    bits = torch.as_tensor(topo.pattern_bits, dtype=torch.float64)
    for b in range(3):
        product = (eta[b] ** bits * (1 - eta[b]) ** (1 - bits)).prod(dim=1)  # [C], "all off" not among them
        torch.testing.assert_close(log_p[b].exp(), product / (1 - (1 - eta[b]).prod()))


def test_confident_edges_stay_finite_and_differentiable():
    topo = Topology(2)
    logits = torch.tensor([[40.0, -40.0, 40.0, -40.0]], dtype=torch.float64, requires_grad=True)
    log_p = pattern_log_probs(logits, topo)
    assert torch.isfinite(log_p).all()
    assert log_p.exp().argmax().item() == 0b0101 - 1  # edges 0 and 2 on
    log_p.exp().max().backward()
    assert torch.isfinite(logits.grad).all()


def brute_force(log_probs: np.ndarray, topo: Topology, tol: float = 1e-9) -> tuple[list[int], float]:
    """Every chain of patterns; the valid ones scored; the lexicographically first of the best."""
    blocks = log_probs.shape[0]
    best, chains = -np.inf, []
    for chain in itertools.product(range(topo.num_patterns), repeat=blocks):
        if any(topo.inputs[chain[b + 1]] != topo.outputs[chain[b]] for b in range(blocks - 1)):
            continue
        total = sum(log_probs[b, c] for b, c in enumerate(chain))
        chains.append((chain, total))
        best = max(best, total)
    winners = [chain for chain, total in chains if total >= best - tol * (1 + abs(best))]
    return list(min(winners)), best


@pytest.mark.parametrize(("depths", "blocks"), [(1, 3), (2, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decoding_equals_brute_force(depths, blocks, seed):
    topo = Topology(depths)
    rng = np.random.default_rng(seed)
    logits = torch.as_tensor(rng.normal(0, 2, (blocks, topo.num_edges)))
    log_p = pattern_log_probs(logits, topo).numpy()
    chain, score = best_chain(log_p, topo)
    want_chain, want_score = brute_force(log_p, topo)
    assert chain == want_chain and score == pytest.approx(want_score, abs=1e-12)


@pytest.mark.parametrize(("depths", "blocks"), [(2, 3), (3, 2)])
def test_ties_are_broken_like_brute_force(depths, blocks):
    topo = Topology(depths)
    # Logits from a few values: many patterns and many chains share the best probability.
    rng = np.random.default_rng(7)
    for _ in range(3):
        logits = torch.as_tensor(rng.choice([-1.0, 0.0, 0.0, 1.0], (blocks, topo.num_edges)))
        log_p = pattern_log_probs(logits, topo).numpy()
        (chain, score), (want_chain, want_score) = best_chain(log_p, topo), brute_force(log_p, topo)
        assert chain == want_chain and score == pytest.approx(want_score, abs=1e-12)
    flat = np.zeros((blocks, topo.num_patterns))  # every chain ties: the smallest valid one wins
    assert best_chain(flat, topo)[0] == brute_force(flat, topo)[0]


@pytest.mark.parametrize("depths", [4, 5])
def test_decoded_chains_are_valid_at_twelve_blocks(depths):
    topo = Topology(depths)
    logits = torch.randn(12, topo.num_edges, generator=torch.Generator().manual_seed(depths))
    chain, score = best_chain(pattern_log_probs(logits, topo).numpy(), topo)
    assert len(chain) == 12 and np.isfinite(score)
    for before, after in zip(chain, chain[1:], strict=False):
        assert topo.inputs[after] == topo.outputs[before]


def test_forbidden_patterns_and_no_valid_chain():
    topo = Topology(2)
    scores = np.zeros((2, topo.num_patterns))
    scores[1, topo.inputs != 0b01] = -np.inf  # block 1 may only read depth 0
    chain, _ = best_chain(scores, topo)
    assert topo.outputs[chain[0]] == 0b01 and topo.inputs[chain[1]] == 0b01
    with pytest.raises(ValueError, match="no valid topology"):
        best_chain(np.full((2, topo.num_patterns), -np.inf), topo)
