"""Topology of the search space, pure and tensor-free: cell edges (§3.1) and the network trellis (§3.2).

Cell: inputs are indexed 0 = h^{l-2}, 1 = h^{l-1}, 2+k = output of block k. Block ``i`` reads every
earlier state (``i + 2`` edges); edges are numbered block by block, each block's inputs in index
order, so α has ``B·(B+3)/2`` rows (20 for B = 5).

Network: the trellis of Fig. 1.
Layers are numbered 0..L, where layer 0 is the stem (only level 0) and layers 1..L are cell layers.
Level ``s`` has output stride ``4·2^s``; layer ``l`` has nodes at levels ``0..min(l, levels-1)``
(layer 1 reaches level 1, layer 2 level 2, and so on, because one step goes down at most one level).

β has shape ``[L, levels, 3]``: ``β[l, s, d]`` weighs the edge from node ``(l, s)`` to node
``(l+1, s+d-1)`` — ``d = 0`` goes up one level (to a higher resolution), ``d = 1`` stays, ``d = 2``
goes down. Paper Eq. 7 normalises each node's **outgoing** edges.
"""

from __future__ import annotations

import numpy as np


def num_edges(num_blocks: int) -> int:
    """Edges of a cell with ``num_blocks`` blocks: 2 + 3 + ... + (B+1) = B(B+3)/2."""
    return num_blocks * (num_blocks + 3) // 2


def edge_offset(block: int) -> int:
    """Index of block ``block``'s first incoming edge (the one from h^{l-2}) in α's edge axis."""
    return block * (block + 3) // 2


OUTPUT_STRIDE_BASE = 4
"""Output stride of level 0 (the stem's resolution)."""


def output_stride(level: int) -> int:
    """Output stride of ``level``: 4, 8, 16, 32 for levels 0..3."""
    return OUTPUT_STRIDE_BASE * 2**level


def node_levels(layer: int, num_levels: int) -> range:
    """Levels present at ``layer`` (0 = stem)."""
    return range(min(layer, num_levels - 1) + 1)


def node_exists(layer: int, level: int, num_levels: int) -> bool:
    return 0 <= level <= min(layer, num_levels - 1)


def beta_mask(num_layers: int, num_levels: int) -> np.ndarray:
    """Boolean ``[L, levels, 3]``: which β entries are real edges of the trellis."""
    mask = np.zeros((num_layers, num_levels, 3), dtype=bool)
    for layer in range(num_layers):
        for level in node_levels(layer, num_levels):
            for d in range(3):
                mask[layer, level, d] = node_exists(layer + 1, level + d - 1, num_levels)
    return mask


def incoming_edges(layer: int, level: int, num_levels: int) -> list[tuple[int, int]]:
    """Edges into node ``(layer, level)`` from layer ``layer-1`` as ``(source_level, d)`` pairs.

    ``d`` indexes β's last axis at ``β[layer-1, source_level]``, so that the weight of the edge is
    ``β[layer-1, source_level, d]`` with ``level == source_level + d - 1``.
    """
    edges = []
    for source in (level + 1, level, level - 1):  # d = 0, 1, 2
        if node_exists(layer - 1, source, num_levels):
            edges.append((source, level - source + 1))
    return edges


def nearest_level(layer: int, level: int, num_levels: int) -> int:
    """The level of ``layer`` closest to ``level`` (used for h^{l-2} in the first layers).

    Layers before the stem (``layer < 0``) are represented by the stem itself, as in Google's
    released network, where the first cell's h^{l-2} is the stem output.
    """
    top = min(max(layer, 0), num_levels - 1)
    return min(level, top)
