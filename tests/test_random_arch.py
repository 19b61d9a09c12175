"""Random Auto-DeepLab architectures: valid, seeded, and uniform (checked against enumeration)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations, product

import pytest
import torch

from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.random_arch import count_paths, random_cell, random_genotype, random_path


def all_paths(num_layers: int, num_levels: int) -> list[tuple[int, ...]]:
    """Every valid path by brute force: start next to the stem's level 0, move at most one level."""
    paths = []
    for path in product(range(num_levels), repeat=num_layers):
        levels = (0, *path)
        if all(abs(a - b) <= 1 for a, b in zip(levels, levels[1:], strict=False)):
            paths.append(path)
    return paths


@pytest.mark.parametrize(("layers", "levels"), [(1, 4), (3, 2), (4, 4), (6, 3), (8, 4)])
def test_path_count_equals_enumeration(layers, levels):
    assert count_paths(layers, levels)[0][0] == len(all_paths(layers, levels))


def test_paths_are_uniform_over_every_valid_path():
    """4 layers × 4 levels: 34 valid paths; 6800 draws, each path expected 200 times (σ ≈ 14)."""
    paths = all_paths(4, 4)
    g = torch.Generator().manual_seed(0)
    seen = Counter(random_path(4, 4, g) for _ in range(200 * len(paths)))
    assert set(seen) == set(paths)
    assert all(abs(n - 200) < 6 * 13.8 for n in seen.values()), seen
    # A random walk (uniform choice of the next level) would give the all-zero path 1/2·1/2·1/2·1/2 → 425
    # draws and the path 0-1-2-3 only 1/2·1/3·1/3·1/3 → ~126: far outside these bounds.


def test_cells_are_uniform_over_inputs_and_never_none():
    ops = [p for p in PRIMITIVES if p != "none"]
    g = torch.Generator().manual_seed(1)
    draws = [random_cell(3, g) for _ in range(2100)]
    for cell in draws:
        for block, ((op_a, a), (op_b, b)) in enumerate(cell):
            assert a < b < block + 2 and op_a in ops and op_b in ops
    # Block 2 sees 4 inputs: 6 unordered pairs, 350 draws each expected (σ ≈ 17).
    pairs = Counter((cell[2][0][1], cell[2][1][1]) for cell in draws)
    assert set(pairs) == set(combinations(range(4), 2))
    assert all(abs(n - 350) < 6 * 17 for n in pairs.values()), pairs
    op_counts = Counter(op for cell in draws for block in cell for op, _ in block)
    assert set(op_counts) == set(ops)
    expected = 2100 * 3 * 2 / len(ops)  # 1800
    assert all(abs(n - expected) < 6 * 39 for n in op_counts.values()), op_counts


def test_supernet_draws_respect_its_layers_levels_and_blocks():
    from autodeeplab.space.autodeeplab.supernet import SearchNetwork, SearchSpaceConfig

    space = SearchSpaceConfig(
        filter_multiplier=2, num_layers=6, num_blocks=3, num_levels=2, stem_channels=(4, 4, 8)
    )
    net = SearchNetwork(space, 3)
    g = torch.Generator().manual_seed(3)
    draws = [net.random_architecture(g) for _ in range(200)]
    assert {len(d.network_path) for d in draws} == {6} and {d.num_blocks for d in draws} == {3}
    assert {level for d in draws for level in d.network_path} == {0, 1}  # never a level the space lacks


def test_random_genotype_is_valid_and_seeded():
    a = random_genotype(12, 5, 4, torch.Generator().manual_seed(7))
    b = random_genotype(12, 5, 4, torch.Generator().manual_seed(7))
    c = random_genotype(12, 5, 4, torch.Generator().manual_seed(8))
    assert a == b and a != c
    assert Genotype.from_json(a.to_json()) == a  # passes validation and round-trips
    assert a.num_layers == 12 and a.num_blocks == 5
