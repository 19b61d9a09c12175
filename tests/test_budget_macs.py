"""The multiply-add budget of the Auto-DeepLab search: the tables equal counting built networks, the
expectation equals the decoded network's count when α and β are decided, the term moves the expectation
towards its target, and a search with a budget logs both figures."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.errors import ConfigError
from autodeeplab.nets.complexity import count_multiply_adds
from autodeeplab.nets.network import AutoDeepLabNet, NetworkConfig
from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.search.budgets import build_mac_tables
from autodeeplab.search.config import SearchConfig
from autodeeplab.space.autodeeplab.budget import (
    decoded_multiply_adds,
    expected_multiply_adds,
    keep_probabilities,
)
from autodeeplab.space.autodeeplab.genotype import BUILTIN
from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig
from autodeeplab.space.autodeeplab.topology import edge_offset

SPACE = SearchSpaceConfig(filter_multiplier=2, num_layers=6, num_blocks=3)
NET = NetworkConfig(
    filter_multiplier=4,
    num_classes=5,
    in_channels=3,
    stem_channels=(8, 8, 16),  # small, so that the searched parts dominate the count
    aspp_channels=8,
    decoder_channels=8,
    fine_skip_channels=4,
)
SIZE = (45, 70)


@pytest.fixture(scope="module")
def tables():
    return build_mac_tables(SPACE, NET, SIZE, 5, 3)


def test_the_tables_count_what_the_built_network_counts(tables):
    space = SearchNetwork(SPACE, 5)
    generator = torch.Generator().manual_seed(0)
    genotypes = [space.random_architecture(generator) for _ in range(8)]
    paper = BUILTIN["paper"]
    twelve = build_mac_tables(SearchSpaceConfig(num_layers=12, num_blocks=5), NET, SIZE, 5, 3)
    assert decoded_multiply_adds(paper, twelve) == count_multiply_adds(
        AutoDeepLabNet(paper, NET), (1, 3, *SIZE)
    )
    for genotype in genotypes:
        counted = count_multiply_adds(AutoDeepLabNet(genotype, NET), (1, 3, *SIZE))
        assert decoded_multiply_adds(genotype, tables) == counted, genotype.short()


def test_keep_probabilities_are_the_first_two_draws():
    strength = torch.tensor([0.5, 0.2, 0.2, 0.1, 0.3], dtype=torch.float64)
    p = strength / strength.sum()
    brute = torch.zeros(5, dtype=torch.float64)
    for i, j in itertools.permutations(range(5), 2):
        both = p[i] * p[j] / (1 - p[i])
        brute[i] += both
        brute[j] += both
    torch.testing.assert_close(keep_probabilities(strength), brute)
    assert float(keep_probabilities(strength).sum()) == pytest.approx(2.0)


def decided_logits(genotype, space: SearchNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    """α and β logits whose softmax is (almost) one-hot on ``genotype``'s ops, inputs and path."""
    alpha = torch.full_like(space.alpha, -30.0)
    alpha[:, PRIMITIVES.index("none")] = 30.0  # the inputs a block does not keep: weak (mostly none)
    for block, pairs in enumerate(genotype.cell):
        for op, source in pairs:
            alpha[edge_offset(block) + source, PRIMITIVES.index(op)] = 60.0
    beta = torch.full_like(space.beta, -30.0)
    previous = 0
    for layer, level in enumerate(genotype.network_path):
        beta[layer, previous, level - previous + 1] = 30.0
        previous = level
    return alpha, beta


def test_the_expectation_of_a_decided_search_is_its_decoded_count(tables):
    space = SearchNetwork(SPACE, 5)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        genotype = space.random_architecture(generator)
        alpha, beta = decided_logits(genotype, space)
        with torch.no_grad():
            space.alpha.copy_(alpha)
            space.beta.copy_(beta)
        assert space.decode() == genotype
        with torch.no_grad():
            expected = expected_multiply_adds(space.alpha_weights(), space.beta_weights(), tables, 3)
        assert float(expected) == pytest.approx(decoded_multiply_adds(genotype, tables), rel=1e-6)


def test_the_budget_term_moves_the_expectation_to_its_target(tables):
    torch.manual_seed(0)
    space = SearchNetwork(SPACE, 5)
    with torch.no_grad():
        start = float(expected_multiply_adds(space.alpha_weights(), space.beta_weights(), tables, 3))
    space.set_multiply_add_budget(tables, 0.85 * start)
    optimizer = torch.optim.Adam(space.arch_parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        space.arch_loss_terms()["multiply_adds"].backward()  # the term alone
        optimizer.step()
    metrics = space.epoch_metrics()
    assert metrics["expected_gmacs"] * 1e9 == pytest.approx(0.85 * start, rel=0.02)
    assert metrics["decoded_gmacs"] < start / 1e9


def test_a_search_with_a_budget_logs_the_expected_and_decoded_counts(tmp_path):
    out = tmp_path / "run"
    sets = ["budget.multiply_adds=0.05", "budget.image_size=[40,48]", "budget.network.filter_multiplier=4"]
    sets += ["budget.network.aspp_channels=8", "budget.network.decoder_channels=8", "epochs=2"]
    sets += ["arch_start_epoch=0", "data.synthetic_train_samples=8", "data.synthetic_val_samples=2"]
    sets += ["data.crop_size=32", "data.synthetic_size=[32,32]", "batch_size=2"]
    assert main(["search", "-q", "-o", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["target_gmacs"] == 0.05 and record["expected_gmacs"] > 0
    genotype = json.loads((out / "genotype.json").read_text())
    from autodeeplab.space.autodeeplab.genotype import Genotype

    net = NetworkConfig(filter_multiplier=4, aspp_channels=8, decoder_channels=8, num_classes=6)
    counted = count_multiply_adds(AutoDeepLabNet(Genotype.from_dict(genotype), net), (1, 3, 40, 48))
    assert record["decoded_gmacs"] == pytest.approx(counted / 1e9, rel=1e-12)


def test_budget_settings_are_checked():
    with pytest.raises(ConfigError, match=r"budget.image_size: must be \[H, W\]"):
        load_config(SearchConfig, overrides=["budget.multiply_adds=5"])
    with pytest.raises(ConfigError, match="budget.multiply_adds: must be"):
        load_config(SearchConfig, overrides=["budget.multiply_adds=-1", "budget.image_size=[8,8]"])
    with pytest.raises(ConfigError, match="budget.multiply_adds: a budget of the Auto-DeepLab search"):
        load_config(
            SearchConfig,
            overrides=["budget.multiply_adds=5", "budget.image_size=[8,8]", "search_space=dints"],
        )
