"""Auto-DeepLab decoding within a multiply-add budget: the Lagrangian Viterbi against enumeration of every
path, the plain decode when it fits, and the supernet/record round trip."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from autodeeplab.nets.network import NetworkConfig
from autodeeplab.search.budgets import build_mac_tables
from autodeeplab.space.autodeeplab.budget import decoded_multiply_adds
from autodeeplab.space.autodeeplab.budget_decode import decode_within_budget, path_with_cost
from autodeeplab.space.autodeeplab.decode import decode, decode_cell, path_score
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

SPACE = SearchSpaceConfig(filter_multiplier=2, num_layers=5, num_blocks=2, num_levels=4)
NET = NetworkConfig(
    filter_multiplier=4,
    num_classes=5,
    in_channels=3,
    stem_channels=(8, 8, 16),
    aspp_channels=8,
    decoder_channels=8,
    fine_skip_channels=4,
)


@pytest.fixture(scope="module")
def tables():
    return build_mac_tables(SPACE, NET, (45, 70), 5, 3)


def weights(seed: int):
    space = SearchNetwork(SPACE, 5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        space.alpha.copy_(torch.randn(space.alpha.shape, generator=g))
        space.beta.copy_(2 * torch.randn(space.beta.shape, generator=g))
    return space.alpha_weights().detach().numpy(), space.beta_weights().detach().numpy()


def every_path(levels: int, layers: int):
    for path in itertools.product(range(levels), repeat=layers):
        if all(abs(b - a) <= 1 for a, b in zip((0, *path), path, strict=False)):
            yield path


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [0.0, 1e-7, 1e-6, 1e-5])
def test_the_viterbi_maximises_log_beta_minus_lambda_macs_over_every_path(tables, seed, lam):
    alpha, beta = weights(seed)
    cell = decode_cell(alpha, SPACE.num_blocks)

    def objective(path):
        score = path_score(beta, path)
        macs = decoded_multiply_adds(Genotype(network_path=path, cell=cell), tables)
        return (math.log(score) if score > 0 else -math.inf) - lam * macs, macs

    path, macs = path_with_cost(beta, cell, tables, lam)
    best = max(objective(p)[0] for p in every_path(SPACE.num_levels, SPACE.num_layers))
    assert objective(path)[0] == pytest.approx(best, abs=1e-9)
    assert macs == objective(path)[1]  # the cost it reports is the found network's count


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_the_decoded_network_fits_and_nothing_cheaper_is_more_probable(tables, seed, share):
    alpha, beta = weights(seed)
    cell = decode_cell(alpha, SPACE.num_blocks)
    plain = decode(alpha, beta, SPACE.num_blocks)
    costs = {p: decoded_multiply_adds(Genotype(network_path=p, cell=cell), tables) for p in every_path(4, 5)}
    cheapest, unconstrained = min(costs.values()), decoded_multiply_adds(plain, tables)
    target = cheapest + share * (unconstrained - cheapest)
    found = decode_within_budget(alpha, beta, SPACE.num_blocks, tables, target)
    assert found.cell == plain.cell
    mine = costs[found.network_path]
    assert mine <= target
    if share == 1.0:
        assert found == plain  # the plain decode fits: unchanged, tie rules included
    score = path_score(beta, found.network_path)
    assert all(path_score(beta, p) <= score * (1 + 1e-9) for p, c in costs.items() if c <= mine)


def test_the_supernet_decodes_within_its_budget(tables):
    space = SearchNetwork(SPACE, 5)
    alpha, beta = weights(5)
    with torch.no_grad():
        space.alpha.copy_(torch.log(torch.as_tensor(alpha)))
        space.beta.copy_(torch.log(torch.as_tensor(beta).clamp_min(1e-30)))
    plain = space.decode()
    unconstrained = decoded_multiply_adds(plain, tables)
    space.set_multiply_add_budget(tables, 0.97 * unconstrained)
    found = space.decode()
    assert decoded_multiply_adds(found, tables) <= 0.97 * unconstrained
    assert space.epoch_metrics()["decoded_gmacs"] == pytest.approx(decoded_multiply_adds(found, tables) / 1e9)
    space.decode_within_budget = False
    assert space.decode() == plain
    assert np.isfinite(space.epoch_metrics()["expected_gmacs"])
