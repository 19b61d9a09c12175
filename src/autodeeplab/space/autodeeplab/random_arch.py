"""Architectures drawn uniformly from Auto-DeepLab's space: the random baseline of a search.

The space is the one decoding can produce: a network-level path that starts at the stem's level 0 and
moves at most one level per layer (:mod:`autodeeplab.space.autodeeplab.topology`), and a cell whose block
``i`` takes two *different* inputs among its ``i + 2`` (top-2 of distinct incoming edges), each with one
of the primitives other than ``none``. "Uniform" is over distinct networks: a path is drawn with
probability 1 / (number of valid paths) — a random walk would not be uniform, because levels near the
borders have fewer continuations — and a block's two pairs are an unordered choice (their sum does not
depend on the order), listed by input index.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.genotype import Genotype


def count_paths(num_layers: int, num_levels: int) -> list[list[int]]:
    """``counts[l][s]``: the number of valid continuations of a path that is at level ``s`` after layer ``l``
    (``l`` = 0 is the stem, so ``counts[0][0]`` is the number of valid paths). Exact integers."""
    counts = [[0] * num_levels for _ in range(num_layers + 1)]
    counts[num_layers] = [1] * num_levels
    for layer in range(num_layers - 1, -1, -1):
        for level in range(num_levels):
            counts[layer][level] = sum(
                counts[layer + 1][t] for t in (level - 1, level, level + 1) if 0 <= t < num_levels
            )
    return counts


def _weighted_choice(options: Sequence[int], weights: Sequence[int], generator: torch.Generator) -> int:
    """One of ``options`` with probability ∝ ``weights`` (non-negative integers), drawn exactly."""
    total = sum(weights)
    pick = int(torch.randint(total, (1,), generator=generator))
    for option, weight in zip(options, weights, strict=True):
        if pick < weight:
            return option
        pick -= weight
    raise AssertionError("unreachable: pick < total")


def random_path(num_layers: int, num_levels: int, generator: torch.Generator) -> tuple[int, ...]:
    """A valid network-level path of ``num_layers`` levels, uniform over all valid paths."""
    counts = count_paths(num_layers, num_levels)
    path, level = [], 0  # the stem is at level 0
    for layer in range(1, num_layers + 1):
        targets = [t for t in (level - 1, level, level + 1) if 0 <= t < num_levels]
        level = _weighted_choice(targets, [counts[layer][t] for t in targets], generator)
        path.append(level)
    return tuple(path)


def random_cell(
    num_blocks: int, generator: torch.Generator, primitives: Sequence[str] = PRIMITIVES
) -> tuple[tuple[tuple[str, int], tuple[str, int]], ...]:
    """A cell of ``num_blocks`` blocks: two different inputs per block (uniform over the unordered pairs)
    and an op for each (uniform over the primitives other than ``none``)."""
    ops = [name for name in primitives if name != "none"]
    cell = []
    for block in range(num_blocks):
        pairs = list(combinations(range(block + 2), 2))
        first, second = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
        op_a, op_b = (ops[int(i)] for i in torch.randint(len(ops), (2,), generator=generator))
        cell.append(((op_a, first), (op_b, second)))
    return tuple(cell)


def random_genotype(
    num_layers: int, num_blocks: int, num_levels: int, generator: torch.Generator
) -> Genotype:
    """A validated :class:`Genotype` drawn uniformly from the space (see the module docstring)."""
    genotype = Genotype(
        network_path=random_path(num_layers, num_levels, generator),
        cell=random_cell(num_blocks, generator),
        num_levels=num_levels,
    )
    return Genotype.from_dict(genotype.to_dict(), "random genotype", num_levels=num_levels)
