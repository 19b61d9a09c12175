"""A multiply-add budget for the Auto-DeepLab search: the expected multiply-adds of the decoded network under
softmax(α) and β, from per-primitive, per-level counts (:class:`MacTables`, counted on the found network's
own modules by :mod:`autodeeplab.search.budgets`).

The found network's multiply-adds are a sum over its parts (``nets/complexity.py`` counts convolutions
only): the stem; per cell ``i`` at level ``c = path[i]`` the two 1×1 preprocessing convs, which depend on
``(path[i-2], path[i-1], c)``, and the ops its cell keeps (two per block), each at level ``c`` and, in a
cell that goes down a level, strided on the cell's inputs; the ASPP at the last level; the decoder, whose
low-level input is a level-0 cell among the first three or else the stem. :func:`decoded_multiply_adds`
adds the parts of one genotype (equal to counting the built network: tested); :func:`expected_multiply_adds`
takes the expectation with the path a Markov chain of β's transition weights (layer ``l``'s row ``s`` holds
the probabilities of going to ``s - 1, s, s + 1``) and each block keeping two of its inputs, input ``j`` with
the probability of being among the first two draws of a Plackett-Luce draw by edge strength (its largest
non-``none`` weight; sums to 2 per block), its op ``p`` with the weight ``softmax(α)_p`` renormalised over the
non-``none`` primitives (decoding never picks ``none``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autodeeplab.ops.primitives import PRIMITIVES
from autodeeplab.space.autodeeplab.genotype import Genotype
from autodeeplab.space.autodeeplab.topology import edge_offset

LOW_LEVEL_LAYERS = 3
"""The decoder's low-level features: the last of the first three cells at level 0, else the stem."""


@dataclass
class MacTables:
    """Multiply-adds of the found network's parts (float64 tensors)."""

    stem: float
    op: torch.Tensor
    """``[levels, 2, P]``: primitive ``p`` in a cell at level ``c``; ``[c, 1]`` strided (an op on a cell
    input in a cell that went down a level), ``[c, 0]`` otherwise. ``none`` costs 0."""
    pre: torch.Tensor
    """``[L, levels, levels, levels]``: cell ``i``'s preprocessing given ``(path[i-2], path[i-1], path[i])``
    (the stem's entries for ``i < 2`` are at level 0)."""
    aspp: torch.Tensor
    """``[levels]``: the ASPP on the last cell, by its level."""
    decoder: torch.Tensor
    """``[2]``: the decoder (and any further stages) with the stem's / a level-0 cell's low-level features."""


def path_distributions(beta_weights: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """From β weights ``[L, levels, 3]``: ``dist[k]`` ``[levels]`` of ``path[k - 2]`` for ``k = 0..L+1``
    (entries 0 and 1 are the stem's, at level 0) and the transitions ``T[k]`` ``[levels, levels]`` from
    ``path[k - 2]`` to ``path[k - 1]`` (``T[0]`` keeps level 0)."""
    num_layers, levels, _ = beta_weights.shape
    start = torch.zeros(levels, dtype=beta_weights.dtype, device=beta_weights.device)
    start[0] = 1.0
    keep = torch.zeros(levels, levels, dtype=start.dtype, device=start.device)
    keep[0, 0] = 1.0
    transitions = [keep]
    for layer in range(num_layers):
        t = torch.zeros(levels, levels, dtype=start.dtype, device=start.device)
        for s in range(levels):
            for d in range(3):
                if 0 <= s + d - 1 < levels:
                    t[s, s + d - 1] = beta_weights[layer, s, d]
        transitions.append(t)
    dists = [start, start]
    for t in transitions[1:]:
        dists.append(dists[-1] @ t)
    return dists, transitions


def keep_probabilities(strength: torch.Tensor) -> torch.Tensor:
    """``[n]``: the probability that each input is among the first two of a draw without replacement with
    probabilities ∝ ``strength`` (``n = 2``: both)."""
    n = strength.shape[0]
    if n <= 2:
        return torch.ones_like(strength)
    p = strength / strength.sum()
    second = torch.stack(
        [(p * p[j] / (1 - p).clamp_min(1e-12)).sum() - p[j] ** 2 / (1 - p[j]) for j in range(n)]
    )
    return p + second


def expected_cell_ops(alpha_weights: torch.Tensor, op_costs: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """``[2]``: the expected multiply-adds of a cell's kept ops at one level (``op_costs [2, P]``), in a
    cell that keeps its level or goes up (0) and in one that goes down (1)."""
    usable = torch.tensor([name != "none" for name in PRIMITIVES], device=alpha_weights.device)
    w = alpha_weights * usable
    op_choice = w / w.sum(dim=1, keepdim=True)  # [E, P], none excluded
    strength = w.max(dim=1).values  # [E]
    total = torch.zeros(2, dtype=op_costs.dtype, device=op_costs.device)
    for block in range(num_blocks):
        edges = slice(edge_offset(block), edge_offset(block) + block + 2)
        keep = keep_probabilities(strength[edges]).to(op_costs.dtype)
        per_input = op_choice[edges].to(op_costs.dtype) @ op_costs.T  # [inputs, 2]
        plain = (keep * per_input[:, 0]).sum()
        strided = (keep[:2] * per_input[:2, 1]).sum() + (keep[2:] * per_input[2:, 0]).sum()
        total = total + torch.stack([plain, strided])
    return total


def expected_multiply_adds(
    alpha_weights: torch.Tensor, beta_weights: torch.Tensor, tables: MacTables, num_blocks: int
) -> torch.Tensor:
    """The expected multiply-adds of the decoded network (a 0-d tensor, differentiable in both weights)."""
    dists, t = path_distributions(beta_weights.double())
    levels = beta_weights.shape[1]
    cells = torch.stack(
        [expected_cell_ops(alpha_weights.double(), tables.op[c], num_blocks) for c in range(levels)]
    )  # [levels, 2]
    down = torch.triu(torch.ones(levels, levels, dtype=torch.bool), diagonal=1)  # [b, c]: c > b
    ops_by_move = torch.where(down, cells[None, :, 1], cells[None, :, 0])  # [b, c]
    total = torch.tensor(tables.stem, dtype=torch.float64)
    for i in range(beta_weights.shape[0]):
        # P(path[i-2] = a, path[i-1] = b, path[i] = c) = dist(a) T(a→b) T(b→c)
        triple = dists[i][:, None, None] * t[i][:, :, None] * t[i + 1][None, :, :]
        total = total + (triple * tables.pre[i]).sum() + (triple.sum(0) * ops_by_move).sum()
    total = total + dists[-1] @ tables.aspp
    reach = dists[1].clone()
    for k in range(min(LOW_LEVEL_LAYERS, beta_weights.shape[0])):
        reach = reach @ t[k + 1]
        reach = torch.cat([reach.new_zeros(1), reach[1:]])  # paths that stay off level 0
    from_stem = reach.sum()
    return total + from_stem * tables.decoder[0] + (1 - from_stem) * tables.decoder[1]


def decoded_multiply_adds(genotype: Genotype, tables: MacTables) -> float:
    """The multiply-adds of ``genotype``'s found network, from the tables (equal to counting it)."""
    path = (0, 0, *genotype.network_path)
    index = {name: k for k, name in enumerate(PRIMITIVES)}
    total = tables.stem
    for i in range(genotype.num_layers):
        a, b, c = path[i], path[i + 1], path[i + 2]
        total += float(tables.pre[i, a, b, c])
        down = c > b
        for block in genotype.cell:
            for op, source in block:
                total += float(tables.op[c, int(down and source < 2), index[op]])
    total += float(tables.aspp[genotype.network_path[-1]])
    low_from_cell = 0 in genotype.network_path[:LOW_LEVEL_LAYERS]
    return total + float(tables.decoder[int(low_from_cell)])
